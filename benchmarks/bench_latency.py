"""Latency of each API call over a slow link vs loopback, beside OpenSSH on the same link.

    python benchmarks/bench_latency.py [--repeat 5] [--json] [--only REGEX]

Needs the testbed (``scripts/testbed up``): ``plain``/``slurm`` are loopback,
``wan-plain``/``wan-slurm`` the same sshd through the testbed's delaying relay
(``DISPATCH_TESTBED_RTT_MS``, 40 ms by default). For each call it prints the median wall
time over loopback and over the slow link and the extra round trips the call costs,
``(wan - loopback) / RTT``, for dispatch (public API only: ``dispatch.aio``) and for
OpenSSH: one ``ssh``/``scp`` process per call, and ``ssh``/``sftp -b`` over a
ControlMaster. ``cold run`` uses a fresh ``Pool`` (and connection) per repetition; every
other dispatch row runs on a warm pool. Progress goes to stderr; the markdown table (or
JSON with ``--json``) to stdout. ``--only submit`` runs only the rows whose name matches.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import asyncssh

ROOT = Path(__file__).resolve().parent.parent


from testbed_env import load_testbed_env  # noqa: E402  (benchmarks/ is on sys.path)

load_testbed_env("DISPATCH_TESTBED_WAN_PLAIN")


import dispatch.aio as dx  # noqa: E402
from dispatch import SlurmJob  # noqa: E402

CONFIG = os.environ["DISPATCH_SSH_CONFIG"]
RTT_MS = float(os.environ["DISPATCH_TESTBED_RTT_MS"])
NETS = {
    "loopback": (os.environ.get("DISPATCH_TESTBED_PLAIN", "plain"),
                 os.environ.get("DISPATCH_TESTBED_SLURM", "slurm")),
    "wan": (os.environ["DISPATCH_TESTBED_WAN_PLAIN"], os.environ["DISPATCH_TESTBED_WAN_SLURM"]),
}
NODES = os.environ.get("DISPATCH_TESTBED_NODES", "node1 node2 node3 node4").split()[:4]
GPU_PARTITION = os.environ.get("DISPATCH_TESTBED_GPU_PARTITION", "gpu")
LOGIN_TRUE = 'exec "$SHELL" -l -c true'
REMOTE_DIR = f".dispatch-bench-latency-{os.getpid()}"  # per run: concurrent runs never clash
SHARE = f"{REMOTE_DIR}/share"  # share_dir of "submit_packed (cached)" (relative: home)
FANOUT = 50  # concurrent submits of the "submit x50" row
METHODS = ("dispatch", "ssh", "ssh-cm", "asyncssh")
METHOD_TITLES = {"dispatch": "dispatch", "ssh": "`ssh` per call", "ssh-cm": "`ssh` ControlMaster",
                 "asyncssh": "raw asyncssh SFTP"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Ctx:
    """What the measured calls need: local files, remote files, job ids, a tiny repo."""

    tmp: Path
    small: Path
    big: Path
    repo: Path
    held_job: int = 0
    done_jobs: list[int] = field(default_factory=list)
    created: list[int] = field(default_factory=list)  # held jobs to cancel at the end
    packed_script: str = ""


def job() -> SlurmJob:
    return SlurmJob(name="bench-latency", command="true", output="/dev/null",
                    extra_directives=["--hold"])


def sbatch_script(payload: str = "") -> str:
    body = "#!/bin/bash\n#SBATCH --job-name=bench-latency\n#SBATCH --output=/dev/null\n"
    body += "#SBATCH --hold\n"
    if payload:
        body += f": <<'PAYLOAD'\n{payload}\nPAYLOAD\n"
    return body + "true\n"


# --- OpenSSH -----------------------------------------------------------------------------
class OpenSSH:
    """``ssh``/``scp``/``sftp`` with the testbed config, optionally over a ControlMaster."""

    def __init__(self, tmp: Path, master: bool) -> None:
        self.opts = ["-F", CONFIG]
        self.master = master
        self.path = str(tmp / "cm-%n")  # per alias: plain and slurm share user@host:port
        if master:
            self.opts += ["-o", f"ControlPath={self.path}", "-o", "ControlMaster=no"]
        self.started: list[str] = []

    def start(self, host: str) -> None:
        if self.master and host not in self.started:
            subprocess.run(["ssh", "-F", CONFIG, "-o", f"ControlPath={self.path}", "-o",
                            "ControlMaster=yes", "-o", "ControlPersist=600", "-fN", host],
                           check=True)
            self.started.append(host)

    def stop(self) -> None:
        for host in self.started:
            subprocess.run(["ssh", "-F", CONFIG, "-o", f"ControlPath={self.path}", "-O", "exit",
                            host], capture_output=True, check=False)

    def ssh(self, host: str, cmd: str, stdin: str | None = None) -> str:
        p = subprocess.run(["ssh", *self.opts, host, cmd], input=stdin, capture_output=True,
                           text=True, check=False)
        assert p.returncode == 0, f"ssh {host} {cmd!r}: {p.stderr.strip()}"
        return p.stdout

    def put(self, host: str, local: Path, remote: str) -> None:
        if self.master:
            self._sftp(host, f"put {local} {remote}\n")
        else:
            subprocess.run(["scp", "-q", *self.opts, str(local), f"{host}:{remote}"], check=True)

    def get(self, host: str, remote: str, local: Path) -> None:
        if self.master:
            self._sftp(host, f"get {remote} {local}\n")
        else:
            subprocess.run(["scp", "-q", *self.opts, f"{host}:{remote}", str(local)], check=True)

    def _sftp(self, host: str, batch: str) -> None:
        subprocess.run(["sftp", "-q", *self.opts, "-b", "-", host], input=batch, text=True,
                       capture_output=True, check=True)


# --- measuring ---------------------------------------------------------------------------
async def amedian(fn: Callable[[], Awaitable[object]], n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def median(fn: Callable[[], object], n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def dispatch_calls(ctx: Ctx, plain: str, slurm: str) -> dict[str, Callable[[], Awaitable[object]]]:
    """Each measured call as a coroutine function checking its own result."""

    async def run() -> None:
        assert (await dx.run("true", plain)).ok

    async def reachable() -> None:
        assert await dx.is_reachable(plain)

    def copy_to(src: Path, name: str) -> Callable[[], Awaitable[None]]:
        async def go() -> None:
            r = await dx.copy_to(src, plain, f"{REMOTE_DIR}/{name}")
            assert r.ok, r.stderr
        return go

    def copy_from(name: str) -> Callable[[], Awaitable[None]]:
        async def go() -> None:
            r = await dx.copy_from(plain, f"{REMOTE_DIR}/{name}", ctx.tmp / f"got-{name}")
            assert r.ok, r.stderr
        return go

    async def submit() -> None:
        r = await dx.submit(job(), slurm)
        assert r.job_id is not None, r.ssh_result.stderr
        ctx.created.append(r.job_id)

    async def submit_packed() -> None:
        r = await dx.submit_packed(job(), slurm, repo_path=str(ctx.repo))
        assert r.job_id is not None, r.ssh_result.stderr
        ctx.created.append(r.job_id)

    async def packed_cached() -> None:
        r = await dx.submit_packed(job(), slurm, repo_path=str(ctx.repo), share_dir=SHARE)
        assert r.job_id is not None, r.ssh_result.stderr
        ctx.created.append(r.job_id)

    async def fanout() -> None:
        rs = await asyncio.gather(*(dx.submit(job(), slurm) for _ in range(FANOUT)))
        assert all(r.job_id is not None for r in rs), [r.ssh_result.stderr for r in rs]
        ctx.created.extend(r.job_id for r in rs if r.job_id is not None)

    async def status() -> None:
        assert (await dx.status(ctx.held_job, slurm)).job is not None

    async def queue() -> None:
        assert (await dx.queue(slurm)).ssh_result.ok

    async def job_info() -> None:
        assert (await dx.job_info(ctx.done_jobs[0], slurm)).main is not None

    async def nodes_info() -> None:
        assert len(await dx.nodes_info(NODES, slurm)) == len(NODES)

    async def gpus() -> None:
        assert await dx.available_gpus(GPU_PARTITION, slurm) is not None

    async def wait10() -> None:
        infos = await asyncio.gather(*(dx.wait(j, slurm, poll_interval=1.0, timeout=120)
                                       for j in ctx.done_jobs))
        assert all(i.main is not None for i in infos)

    return {
        "warm run": run, "is_reachable": reachable,
        "copy_to 1 KiB": copy_to(ctx.small, "up-small"),
        "copy_to 10 MB": copy_to(ctx.big, "up-big"),
        "copy_from 1 KiB": copy_from("small"), "copy_from 10 MB": copy_from("big"),
        "submit": submit, "submit_packed": submit_packed,
        "submit_packed (cached)": packed_cached, f"submit x{FANOUT}": fanout,
        "status": status, "queue": queue,
        "job_info": job_info, "nodes_info (4 nodes)": nodes_info, "available_gpus": gpus,
        "wait (10 jobs)": wait10,
    }


def raw_asyncssh_calls(
    ctx: Ctx, sftp: asyncssh.SFTPClient
) -> dict[str, Callable[[], Awaitable[object]]]:
    """The copy rows with plain asyncssh: one connection, one SFTP session, ``put``/``get``."""
    return {
        "copy_to 1 KiB": lambda: sftp.put(str(ctx.small), f"{REMOTE_DIR}/raw-up-small"),
        "copy_to 10 MB": lambda: sftp.put(str(ctx.big), f"{REMOTE_DIR}/raw-up-big"),
        "copy_from 1 KiB": lambda: sftp.get(f"{REMOTE_DIR}/small", str(ctx.tmp / "raw-small")),
        "copy_from 10 MB": lambda: sftp.get(f"{REMOTE_DIR}/big", str(ctx.tmp / "raw-big")),
    }


def openssh_calls(ctx: Ctx, o: OpenSSH, plain: str, slurm: str) -> dict[str, Callable[[], object]]:
    """The same calls as a user would make them with OpenSSH."""
    ids = ",".join(map(str, ctx.done_jobs))

    def sbatch(script: str) -> None:
        out = o.ssh(slurm, "sbatch --parsable", stdin=script)
        ctx.created.append(int(out.split(";")[0]))

    def fanout() -> None:
        # over the ControlMaster, 8 at a time: its sshd allows MaxSessions (10) per
        # connection, and 50 fresh handshakes at once would trip MaxStartups
        with ThreadPoolExecutor(max_workers=8) as threads:
            list(threads.map(lambda _: sbatch(sbatch_script()), range(FANOUT)))

    return {
        "warm run": lambda: o.ssh(plain, LOGIN_TRUE),
        "is_reachable": lambda: o.ssh(plain, "true"),
        "copy_to 1 KiB": lambda: o.put(plain, ctx.small, f"{REMOTE_DIR}/ssh-up-small"),
        "copy_to 10 MB": lambda: o.put(plain, ctx.big, f"{REMOTE_DIR}/ssh-up-big"),
        "copy_from 1 KiB": lambda: o.get(plain, f"{REMOTE_DIR}/small", ctx.tmp / "ssh-small"),
        "copy_from 10 MB": lambda: o.get(plain, f"{REMOTE_DIR}/big", ctx.tmp / "ssh-big"),
        "submit": lambda: sbatch(sbatch_script()),
        "submit_packed": lambda: sbatch(ctx.packed_script),
        "submit_packed (cached)": lambda: sbatch(sbatch_script()),
        f"submit x{FANOUT}": fanout,
        "status": lambda: o.ssh(slurm, f"squeue -h -j {ctx.held_job}"),
        "queue": lambda: o.ssh(slurm, "squeue -h -u $USER"),
        "job_info": lambda: o.ssh(slurm, f"sacct -n -P -j {ctx.done_jobs[0]}"),
        "nodes_info (4 nodes)": lambda: o.ssh(slurm, f"scontrol show node {','.join(NODES)}"),
        "available_gpus": lambda: o.ssh(slurm, f"sinfo -h -N -p {GPU_PARTITION} -o '%N %G %t'"),
        "wait (10 jobs)": lambda: o.ssh(slurm, f"squeue -h -j {ids}; sacct -n -P -X -j {ids}"),
    }


# --- setup -------------------------------------------------------------------------------
def make_repo(path: Path) -> None:
    path.mkdir()
    (path / "train.py").write_text("print('hello')\n" * 20)
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}
    for argv in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "bench"]):
        subprocess.run(["git", "-C", str(path), *argv], check=True, env=env)


async def setup(ctx: Ctx, slurm_rows: bool = True) -> None:
    plain, slurm = NETS["loopback"]
    assert (await dx.run(["mkdir", "-p", REMOTE_DIR], plain)).ok
    for src, name in ((ctx.small, "small"), (ctx.big, "big")):
        r = await dx.copy_to(src, plain, f"{REMOTE_DIR}/{name}")
        assert r.ok, r.stderr
    if not slurm_rows:  # e.g. --only copy: no jobs to prepare
        return
    r0 = await dx.submit(job(), slurm)
    assert r0.job_id is not None, r0.ssh_result.stderr
    ctx.held_job = r0.job_id
    ctx.created.append(r0.job_id)
    script = "for i in $(seq 10); do sbatch --parsable --output=/dev/null " \
             "--job-name=bench-latency-wait --wrap true || exit 1; done"
    out = await dx.run(script, slurm)
    assert out.ok, out.stderr
    ctx.done_jobs = [int(x.split(";")[0]) for x in out.stdout.split()]
    log(f"waiting for jobs {ctx.done_jobs[0]}..{ctx.done_jobs[-1]} to finish")
    await asyncio.gather(*(dx.wait(j, slurm, poll_interval=1.0, timeout=300)
                           for j in ctx.done_jobs))
    archive = subprocess.run(["git", "-C", str(ctx.repo), "archive", "--format=tar.gz", "HEAD"],
                             capture_output=True, check=True).stdout
    ctx.packed_script = sbatch_script(base64.b64encode(archive).decode())


async def cleanup(ctx: Ctx) -> None:
    plain, slurm = NETS["loopback"]
    async with dx.Pool():
        await asyncio.gather(*(dx.cancel(j, slurm) for j in ctx.created))
        await dx.run(["rm", "-rf", REMOTE_DIR], plain)


# --- the benchmark -----------------------------------------------------------------------
async def bench(n: int, only: str = "") -> dict[str, dict[str, dict[str, float]]]:
    """results[call][method][net] = median ms (rows matching the regex ``only``)."""
    results: dict[str, dict[str, dict[str, float]]] = {}

    def want(call: str) -> bool:
        return re.search(only, call) is not None

    def put(call: str, method: str, net: str, ms: float) -> None:
        results.setdefault(call, {}).setdefault(method, {})[net] = ms
        log(f"  {call:<22} {method:<9} {net:<9} {ms:9.1f} ms")

    with tempfile.TemporaryDirectory(prefix="bench-latency-") as d:
        tmp = Path(d)
        ctx = Ctx(tmp=tmp, small=tmp / "small.bin", big=tmp / "big.bin", repo=tmp / "repo")
        ctx.small.write_bytes(os.urandom(1024))
        ctx.big.write_bytes(os.urandom(10 * 1000 * 1000))
        make_repo(ctx.repo)
        try:
            async with dx.Pool():
                no_slurm = ("copy", "warm run", "is_reachable", "cold run")
                await setup(ctx, any(want(c) and not c.startswith(no_slurm)
                                     for c in dispatch_calls(ctx, *NETS["loopback"])))
            for net, (plain, slurm) in NETS.items():
                log(f"{net}: {plain}, {slurm}")

                async def cold(host: str = plain) -> None:
                    async with dx.Pool():
                        assert (await dx.run("true", host)).ok

                if want("cold run"):
                    put("cold run", "dispatch", net, await amedian(cold, n))
                async with dx.Pool():
                    assert (await dx.run("true", plain)).ok and (await dx.run("true", slurm)).ok
                    for call, fn in dispatch_calls(ctx, plain, slurm).items():
                        if not want(call):
                            continue
                        await fn()  # warm-up (and first-use caches)
                        put(call, "dispatch", net, await amedian(fn, n))
                raw = raw_asyncssh_calls(ctx, None)  # type: ignore[arg-type]  # names only
                if any(want(call) for call in raw):
                    async with asyncssh.connect(plain, config=[CONFIG]) as conn, \
                            conn.start_sftp_client() as sftp:
                        for call, rfn in raw_asyncssh_calls(ctx, sftp).items():
                            if want(call):
                                await rfn()  # warm-up
                                put(call, "asyncssh", net, await amedian(rfn, n))
                for method in ("ssh", "ssh-cm"):
                    o = OpenSSH(tmp, master=method == "ssh-cm")
                    if method == "ssh" and want("cold run"):
                        # one process per call is always cold: same as its warm run
                        put("cold run", method, net, median(partial(o.ssh, plain, LOGIN_TRUE), n))
                    try:
                        o.start(plain)
                        o.start(slurm)
                        for call, sfn in openssh_calls(ctx, o, plain, slurm).items():
                            if not want(call) or (call == f"submit x{FANOUT}" and not o.master):
                                continue
                            sfn()
                            put(call, method, net, median(sfn, n))
                    finally:
                        o.stop()
        finally:
            await cleanup(ctx)
    return results


def table(results: dict[str, dict[str, dict[str, float]]], n: int) -> str:
    head = ["call"]
    for m in METHODS:
        head += [f"{METHOD_TITLES[m]} loopback ms", "wan ms", "extra RTs"]
    lines = [f"Round trip {RTT_MS:g} ms; median of {n}; extra RTs = (wan - loopback) / RTT.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for call, by_method in results.items():
        cells = [call]
        for m in METHODS:
            r = by_method.get(m)
            if r is None:
                cells += ["", "", ""]
                continue
            lo, wan = r["loopback"], r["wan"]
            cells += [f"{lo:.0f}", f"{wan:.0f}", f"{(wan - lo) / RTT_MS:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="repetitions per call (median)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--only", default="", metavar="REGEX",
                    help="run only the rows whose call name matches (e.g. submit)")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error(f"--repeat {args.repeat}: must be >= 1")
    try:
        re.compile(args.only)
    except re.error as exc:
        ap.error(f"--only {args.only!r}: {exc}")
    results = asyncio.run(bench(args.repeat, args.only))
    if args.json:
        print(json.dumps({"rtt_ms": RTT_MS, "repeat": args.repeat, "results": results},
                         indent=2))
    else:
        print(table(results, args.repeat))


if __name__ == "__main__":
    main()
