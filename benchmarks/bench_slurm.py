"""SLURM benchmarks on the testbed cluster (side by side with the naive alternative).

    python benchmarks/bench_slurm.py [--jobs 50] [--interval 1.0]

1. 50 concurrent ``wait``s: squeue calls per minute with the shared poller vs one poller
   per job (simulated: every waiter calls ``status`` each interval, as a naive loop does).
2. ``nodes_info`` over all nodes (and over 200 names) vs one ``scontrol`` per node.
3. submit latency for a 1 KB and a 10 MB payload: embedded in the script vs uploaded by
   SFTP to a share dir (first upload, and resubmitting unchanged code).
Needs the testbed (``scripts/testbed up``); reads its settings from ``scripts/testbed env``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import io
import os
import sys
import tarfile
import time
from pathlib import Path

from testbed_env import load_testbed_env

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))


from dispatch.errors import SubmitError  # noqa: E402
from dispatch.slurm import query  # noqa: E402
from dispatch.slurm.job import SlurmJob  # noqa: E402
from dispatch.slurm.poller import poller_stats, wait  # noqa: E402
from dispatch.ssh.commands import run  # noqa: E402

submit_mod = importlib.import_module("dispatch.slurm.submission")


def _row(*cells: object) -> str:
    return "  ".join(f"{c!s:<40}" if i == 0 else f"{c!s:>16}" for i, c in enumerate(cells))


async def _sbatch_many(host: str, n: int, seconds: int) -> list[int]:
    parts = f"{os.environ.get('DISPATCH_TESTBED_CPU_PARTITION', 'cpu')}," \
            f"{os.environ.get('DISPATCH_TESTBED_GPU_PARTITION', 'gpu')}"
    script = (f"for i in $(seq {n}); do sbatch --parsable --partition={parts} "
              f"--output=/dev/null --job-name=bench --wrap 'sleep {seconds}' || exit 1; done")
    out = await run(script, host)
    assert out.ok, out.stderr
    return [int(x.split(";")[0]) for x in out.stdout.split()]


async def bench_waits(host: str, n: int, interval: float, seconds: int) -> list[str]:
    rows = []
    # shared poller
    ids = await _sbatch_many(host, n, seconds)
    stats = poller_stats(host)
    c0 = stats.squeue_calls
    t0 = time.monotonic()
    await asyncio.gather(*(wait(j, host, poll_interval=interval, timeout=600) for j in ids))
    shared_t = time.monotonic() - t0
    shared = stats.squeue_calls - c0
    # one poller per job (naive): each waiter asks squeue on its own every interval
    ids = await _sbatch_many(host, n, seconds)
    calls = 0

    async def naive(job_id: int) -> None:
        nonlocal calls
        while True:
            calls += 1
            st = await query.status(job_id, host)
            if st.ssh_result.ok and (st.job is None or st.job.state in
                                     {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}):
                return
            await asyncio.sleep(interval)

    t0 = time.monotonic()
    await asyncio.gather(*(naive(j) for j in ids))
    naive_t = time.monotonic() - t0
    per_min_shared = shared / shared_t * 60
    per_min_naive = calls / naive_t * 60
    rows.append(_row(f"{n} waits: squeue calls", shared, calls, f"{calls / shared:.1f}x"))
    rows.append(_row(f"{n} waits: squeue calls/min", f"{per_min_shared:.0f}",
                     f"{per_min_naive:.0f}", f"{per_min_naive / per_min_shared:.1f}x"))
    rows.append(_row(f"{n} waits: wall time (s)", f"{shared_t:.1f}", f"{naive_t:.1f}",
                     f"{naive_t / shared_t:.2f}x"))
    return rows


async def bench_nodes(host: str) -> list[str]:
    nodes = [p for part in await query.partitions(host) for p in part.nodes]
    rows = []
    for label, names in ((f"nodes_info, {len(nodes)} nodes", nodes),
                         ("nodes_info, 200 names", nodes + [f"ghost{i}" for i in range(200 -
                                                                                     len(nodes))])):
        t0 = time.monotonic()
        batched = await query.nodes_info(names, host)
        tb = time.monotonic() - t0
        t0 = time.monotonic()
        one_by_one = await asyncio.gather(*(query.node_info(n, host) for n in names))
        tn = time.monotonic() - t0
        assert sorted(batched) == sorted(i.name for i in one_by_one if i is not None)
        calls_b = -(-len(names) // query.NODES_PER_CALL)
        rows.append(_row(f"{label}: scontrol calls", calls_b, len(names),
                         f"{len(names) / calls_b:.0f}x"))
        rows.append(_row(f"{label}: seconds", f"{tb:.3f}", f"{tn:.3f}", f"{tn / tb:.1f}x"))
    return rows


def _tarball(size: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = os.urandom(size)
        info = tarfile.TarInfo("blob.bin")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


async def bench_submit(host: str, share: str) -> list[str]:
    rows = []
    job = SlurmJob(name="bench-submit", command="true", output="/dev/null",
                   extra_directives=["--hold"])
    submitted: list[int] = []
    for label, size in (("1 KB", 1024), ("10 MB", 10 * 1024 * 1024)):
        tarball = _tarball(size)
        t0 = time.monotonic()
        try:
            res = await submit_mod.submit(job.pack(tarball), host)
            assert res.job_id is not None, res.ssh_result.stderr
            submitted.append(res.job_id)
            embedded = f"{time.monotonic() - t0:.3f}"
        except SubmitError:
            embedded = f"rejected {time.monotonic() - t0:.3f}"
        times = []
        for _ in range(2):  # first: uploads the payload; second: already there
            t0 = time.monotonic()
            path, up = await submit_mod.upload_payload(tarball, host, share)
            assert up.ok, up.stderr
            res = await submit_mod._submit(job, host, share, None, None, payload_path=path)
            times.append(time.monotonic() - t0)
            assert res.job_id is not None, res.ssh_result.stderr
            submitted.append(res.job_id)
        rows.append(_row(f"submit {label} s: embedded | SFTP upload", embedded,
                         f"{times[0]:.3f}", ""))
        rows.append(_row(f"submit {label} s: SFTP cached | upload", f"{times[1]:.3f}",
                         f"{times[0]:.3f}", f"{times[0] / times[1]:.1f}x"))
    for job_id in submitted:
        await query.cancel(job_id, host)
    return rows


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--seconds", type=int, default=5, help="how long each waited job sleeps")
    args = ap.parse_args()
    load_testbed_env()
    host = os.environ.get("DISPATCH_TESTBED_SLURM", "slurm")
    home = await submit_mod.remote_home(host)
    share = f"{home}/.dispatch-bench/share"
    print(_row("benchmark", "dispatch", "alternative", "ratio"))
    print("-" * 94)
    try:
        for line in await bench_nodes(host):
            print(line)
        for line in await bench_submit(host, share):
            print(line)
        for line in await bench_waits(host, args.jobs, args.interval, args.seconds):
            print(line)
    finally:
        await run(["rm", "-rf", f"{home}/.dispatch-bench"], host)


if __name__ == "__main__":
    asyncio.run(main())
