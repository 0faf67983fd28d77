"""``dispatch logs``: print a SLURM job's output file, or follow it until the job ends.

``dispatch logs HOST JOB`` prints what the job's stdout file holds now; ``-f`` follows it
(from the first line, waiting for a pending job's file to appear) until the job has ended
and the file is drained; ``--stderr`` reads the ``--error`` file instead (the same file
unless the job set one). It uses `dispatch.follow`.
"""

from __future__ import annotations

import argparse
import json
import sys

from .argtypes import job_id, seconds
from .console import CliError, out

__all__ = ["add_arguments", "cmd_logs"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``dispatch logs``."""
    p.add_argument("host", metavar="HOST")
    p.add_argument("job", type=job_id, metavar="JOB", help="job id (123, or an element 123_4)")
    p.add_argument("--follow", "-f", action="store_true",
                   help="keep printing new lines until the job has ended")
    p.add_argument("--stderr", action="store_true",
                   help="the job's --error file instead of its --output file")
    p.add_argument("--interval", type=seconds, default=2.0, metavar="S",
                   help="with -f: seconds between reads while nothing new came (default 2)")


def cmd_logs(args: argparse.Namespace) -> int:
    """Run ``dispatch logs``: print the lines (one JSON object a line with --json); exit 1
    when the job is unknown or its file cannot be read."""
    from .. import FollowError, follow

    stream = "stderr" if args.stderr else "stdout"
    try:
        for line in follow(args.job, args.host, stream, poll_interval=args.interval,
                           live=args.follow):
            if args.json:
                out(json.dumps({"job": str(args.job), "stream": stream, "line": line}))
            else:
                out(line)
            if args.follow:
                sys.stdout.flush()
    except FollowError as exc:
        raise CliError(str(exc)) from exc
    return 0
