"""How many SSH requests a submission makes (counts, not times), on the real testbed.

On loopback a round trip is free, so a regression back to sequential requests (a probe,
a mkdir, an SFTP session per script, then sbatch) would pass every other test and cost
a user on a 40 ms link a second per job. These tests count the channels each call opens
on the pool (every ``run`` and SFTP session is one) and the ``run``/``write_file`` calls
the submission modules make: a warm ``submit`` is ONE remote command, 20 concurrent
submits to one host share ONE, and ``submit_packed`` with a cached payload is ONE.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dispatch.slurm.job import SlurmJob
from dispatch.slurm.query import cancel
from dispatch.slurm.submission import submit, submit_packed
from dispatch.ssh import Pool, run

from ..conftest import Testbed

batch_mod = importlib.import_module("dispatch.slurm.batch")
payload_mod = importlib.import_module("dispatch.slurm.payload")
userdir_mod = importlib.import_module("dispatch.slurm.userdir")


@dataclass
class Counts:
    channels: int = 0  # channels opened on the pool: commands and SFTP sessions
    runs: list[str] = field(default_factory=list)  # which module ran a command
    writes: list[str] = field(default_factory=list)  # write_file paths

    def reset(self) -> None:
        self.channels = 0
        self.runs.clear()
        self.writes.clear()


@pytest.fixture
async def counted(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Pool, Counts]]:
    """A fresh pool whose channel opens are counted, and counted run/write_file calls.

    Command sessions are off: a cold host starts one in the background beside its first
    call, a channel that is no request of the submit's (sessions are counted in
    test_ssh_sessions.py)."""
    counts = Counts()
    async with Pool(command_sessions=False) as pool:
        real_open = pool.open_channel

        async def open_channel(*args: Any, **kwargs: Any) -> Any:
            counts.channels += 1
            return await real_open(*args, **kwargs)

        monkeypatch.setattr(pool, "open_channel", open_channel)
        for mod, label in ((batch_mod, "submit"), (userdir_mod, "identity")):
            real_run = mod.run

            async def counting_run(*args: Any, _real: Any = real_run, _label: str = label,
                                   **kwargs: Any) -> Any:
                counts.runs.append(_label)
                return await _real(*args, **kwargs)

            monkeypatch.setattr(mod, "run", counting_run)
        real_write = payload_mod.write_file

        async def counting_write(host: str, path: str, data: bytes, **kw: Any) -> Any:
            counts.writes.append(path)
            return await real_write(host, path, data, **kw)

        monkeypatch.setattr(payload_mod, "write_file", counting_write)
        yield pool, counts


def _job(name: str, **kw: Any) -> SlurmJob:
    kw.setdefault("partition", os.environ.get("DISPATCH_TESTBED_CPU_PARTITION", "cpu"))
    return SlurmJob(name=name, command="true", output="/dev/null",
                    extra_directives=["--hold"], **kw)


async def _modes(host: str, directory: str) -> list[str]:
    ls = await run(f"stat -c '%a %n' {directory} {directory}/*", host)
    assert ls.ok, ls
    return sorted(line.split()[0] + " " + line.split()[1].rsplit("/", 1)[1]
                  for line in ls.stdout.splitlines())


async def _job_dir(host: str, job_id: int) -> str:
    show = await run(["scontrol", "show", "job", str(job_id)], host)
    assert show.ok, show
    command = next(w for w in show.stdout.split() if w.startswith("Command="))
    return command.removeprefix("Command=").rsplit("/", 1)[0]


async def test_warm_submit_is_one_remote_command(
    testbed: Testbed, counted: tuple[Pool, Counts]
) -> None:
    _, counts = counted
    ids: list[int] = []
    try:
        first = await submit(_job("req-cold"), testbed.slurm)
        assert first.job_id is not None, first.ssh_result
        ids.append(first.job_id)
        # a new pool: the home/user probe, then the one submission command
        assert counts.runs == ["identity", "submit"] and counts.channels == 2, counts
        counts.reset()
        warm = await submit(_job("req-warm"), testbed.slurm)
        assert warm.job_id is not None, warm.ssh_result
        ids.append(warm.job_id)
        assert counts.runs == ["submit"] and counts.channels == 1 and not counts.writes, counts
        assert warm.ssh_result.stdout.strip() == str(warm.job_id)
        # what that one command left behind: a private job dir with both scripts
        directory = await _job_dir(testbed.slurm, warm.job_id)
        assert "/.dispatch/jobs/req-warm-" in directory
        names = [m.split()[1] for m in await _modes(testbed.slurm, directory)]
        assert sorted(await _modes(testbed.slurm, directory)) == sorted(
            f"700 {n}" for n in names) and set(names) >= {"sbatch.sh", "bootstrap.sh"}
    finally:
        for job_id in ids:
            await cancel(job_id, testbed.slurm)


async def test_concurrent_submits_share_one_command(
    testbed: Testbed, counted: tuple[Pool, Counts]
) -> None:
    _, counts = counted
    warm = await submit(_job("req-warmup"), testbed.slurm)
    assert warm.job_id is not None, warm.ssh_result
    ids = [warm.job_id]
    try:
        counts.reset()
        tag = uuid.uuid4().hex[:6]
        jobs = [_job(f"req-fan{tag}-{i}") for i in range(20)]
        jobs[7] = _job(f"req-fan{tag}-bad", partition="nosuchpartition")
        results = await asyncio.gather(*(submit(j, testbed.slurm) for j in jobs))
        assert counts.runs == ["submit"] and counts.channels == 1, counts
        good = [r for i, r in enumerate(results) if i != 7]
        assert all(r.job_id is not None and r.ok for r in good), good
        ids += [r.job_id for r in good if r.job_id is not None]
        assert len(set(ids)) == 20  # the warm-up job and 19 others
        # each job got its own result: its own id on stdout, and sbatch's own error
        assert all(r.ssh_result.stdout.strip() == str(r.job_id) for r in good)
        bad = results[7]
        assert bad.job_id is None and not bad.ok and bad.ssh_result.returncode != 0
        assert "partition" in bad.ssh_result.stderr.lower(), bad.ssh_result
        # the rejected job left nothing; every other job has its private dir
        ls = await run(f"ls ~/.dispatch/jobs/ | grep -- '^req-fan{tag}-'", testbed.slurm)
        names = ls.stdout.split()
        assert len(names) == 19 and not any(n.startswith(f"req-fan{tag}-bad") for n in names)
    finally:
        for job_id in ids:
            await cancel(job_id, testbed.slurm)


@pytest.fixture
def git_repo(tmp_path: Path) -> Iterator[Path]:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "main.py").write_text(f"print('{uuid.uuid4().hex}')\n")  # a payload never cached
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for argv in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "x"]):
        subprocess.run(argv, cwd=repo, check=True, env=env, capture_output=True)
    yield repo


async def test_submit_packed_cached_payload_is_one_command(
    testbed: Testbed, counted: tuple[Pool, Counts], git_repo: Path
) -> None:
    _, counts = counted
    home = (await run('printf "%s" "$HOME"', testbed.slurm)).stdout
    share = f"{home}/.dispatch-tests/req-{uuid.uuid4().hex[:8]}"
    ids: list[int] = []
    try:
        first = await submit_packed(_job("req-packed"), testbed.slurm,
                                    repo_path=str(git_repo), share_dir=share)
        assert first.job_id is not None, first.ssh_result
        ids.append(first.job_id)
        # not cached yet: the command says so (no job), one upload, the command again
        assert counts.runs == ["identity", "submit", "submit"], counts
        assert len(counts.writes) == 1 and "/payloads/" in counts.writes[0], counts
        counts.reset()
        again = await submit_packed(_job("req-packed"), testbed.slurm,
                                    repo_path=str(git_repo), share_dir=share)
        assert again.job_id is not None, again.ssh_result
        ids.append(again.job_id)
        assert counts.runs == ["submit"] and counts.channels == 1 and not counts.writes, counts
        # a cached payload that fails its sha256 check is replaced, not used
        payloads = f"{share}/.dispatch-{testbed.user}/payloads"
        tamper = await run(f"for f in {payloads}/*.tar.gz; do printf x >> \"$f\"; done",
                           testbed.slurm)
        assert tamper.ok, tamper
        counts.reset()
        third = await submit_packed(_job("req-packed"), testbed.slurm,
                                    repo_path=str(git_repo), share_dir=share)
        assert third.job_id is not None, third.ssh_result
        ids.append(third.job_id)
        assert counts.runs == ["submit", "submit"] and len(counts.writes) == 1, counts
        check = await run(f"cd {payloads} && for f in *.tar.gz; do "
                          "[ \"$(sha256sum < $f | cut -d' ' -f1).tar.gz\" = \"$f\" ] "
                          "&& echo good; done", testbed.slurm)
        assert check.stdout.split() == ["good"], check
    finally:
        for job_id in ids:
            await cancel(job_id, testbed.slurm)
        await run(["rm", "-rf", share], testbed.slurm)
