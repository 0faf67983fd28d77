"""On the testbed's SLURM: GPUs behind a node's exhausted CPUs don't count (issue 16 item 4),
start estimates for jobs that cannot start now and pending reasons in words (issue 17), and
each query is ONE remote command (issue 14: ask once, not in sequence)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from dispatch.placement.probe import SshAvailability
from dispatch.results import RunResult
from dispatch.slurm import SlurmJob, estimate_start, query, together

from ..conftest import Testbed
from ..support.remote import until


def _env(testbed: Testbed, key: str, default: str) -> str:
    return testbed.env.get(f"DISPATCH_TESTBED_{key}", default)


class RunCounter:
    """Counts `run` calls made by the SLURM query modules (each is one remote command)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        for mod in (query, together):
            real = mod.run

            async def counting(*args: object, _real=real, **kw: object) -> RunResult:
                self.calls += 1
                return await _real(*args, **kw)  # type: ignore[arg-type]

            monkeypatch.setattr(mod, "run", counting)

    def take(self) -> int:
        n, self.calls = self.calls, 0
        return n


async def _sbatch(testbed: Testbed, *args: str) -> int:
    res = await query.run(["sbatch", "--parsable", "--output=/dev/null", *args], testbed.slurm)
    assert res.ok, res.stderr
    return int(res.stdout.strip().split(";")[0])


@pytest.fixture
async def cpu_hog(testbed: Testbed) -> AsyncIterator[int]:
    """A CPU-only job holding every CPU of the first GPU node (2-minute limit), running."""
    node = _env(testbed, "GPU_NODES", "node1 node2").split()[0]
    cpus = _env(testbed, "NODE_CPUS", "4")
    job = await _sbatch(testbed, f"--partition={_env(testbed, 'GPU_PARTITION', 'gpu')}",
                        f"--nodelist={node}", f"--cpus-per-task={cpus}", "--time=2",
                        "--job-name=test-cpu-hog", "--wrap=sleep 300")
    try:
        async def running() -> bool:
            st = await query.status(job, testbed.slurm)
            return st.job is not None and st.job.is_running
        await until(running, 90, every=0.5, what=f"job {job} to run on {node}")
        yield job
    finally:
        await query.cancel(job, testbed.slurm)


async def test_cpu_hog_hides_the_nodes_gpus_and_estimates_a_later_start(
        testbed: Testbed, cpu_hog: int, monkeypatch: pytest.MonkeyPatch) -> None:
    node1, node2 = _env(testbed, "GPU_NODES", "node1 node2").split()[:2]
    part = _env(testbed, "GPU_PARTITION", "gpu")
    gtype = _env(testbed, "GPU_TYPE", "h100")
    runs = RunCounter(monkeypatch)

    # Issue 16 item 4: node1's 4 GPUs are unallocated, but no job can get a CPU there.
    free = dict(await query.available_gpus(part, testbed.slurm))
    assert runs.take() == 1
    assert node1 not in free
    info = await query.node_info(node1, testbed.slurm)
    gres = info.get_gres("gpu") if info else None
    assert gres is not None and gres.allocated == 0  # the GPUs themselves are free
    # ... and the solver, which reads the same call, inherits it.
    solver_view = dict(await SshAvailability().slurm_free_gpus(testbed.slurm, part, gtype, 30))
    assert node1 not in solver_view
    runs.take()

    # job_info of a running job: sacct and squeue asked in ONE remote command.
    ji = await query.job_info(cpu_hog, testbed.slurm)
    assert runs.take() == 1
    # (slurmdbd may still hold its "allocation" placeholder row for the job itself)
    assert ji.ssh_result.ok and ji.main is not None and not ji.main.is_finished
    assert any(step.state == "RUNNING" for step in ji.steps)

    # A 1-GPU job pinned to node1 cannot start now: Slurm plans it for the hog's end.
    pinned = SlurmJob(name="test-estimate", command="true", partition=part, gpus=1,
                      gpu_type=gtype, time="1", extra_directives=[f"--nodelist={node1}"])
    est = await estimate_start(pinned, testbed.slurm)
    assert runs.take() == 1
    assert est.ok, est.ssh_result.stderr
    assert est.nodes == (node1,) and est.partition == part
    assert est.delay is not None and timedelta(seconds=30) < est.delay <= timedelta(minutes=2)
    assert not est.starts_now
    # Unpinned, node2 is free: now.
    anywhere = await estimate_start(SlurmJob(name="test-estimate", command="true",
                                             partition=part, gpus=1, gpu_type=gtype,
                                             time="1"), testbed.slurm)
    assert anywhere.starts_now and anywhere.nodes == (node2,)
    runs.take()

    # The same job queued: it pends on Resources, with squeue's estimate.
    queued = await _sbatch(testbed, f"--partition={part}", f"--nodelist={node1}",
                           f"--gres=gpu:{gtype}:1", "--time=1", "--job-name=test-estimate",
                           "--wrap=true")
    try:
        async def estimated():  # type: ignore[no-untyped-def]
            e = await estimate_start(queued, testbed.slurm)
            # (reason "None" until the scheduler has looked at the job)
            ready = e.start is not None and e.reason is not None and e.reason.code != "None"
            return e if ready else None
        pending = await until(estimated, 30, every=0.5, what="squeue's start estimate and reason")
        assert pending.job_id == queued and pending.state == "PENDING"
        assert pending.reason.code in ("Resources", "Priority")
        assert pending.reason.known and pending.reason.remedy
        assert pending.nodes == (node1,)
        assert pending.delay is not None and pending.delay > timedelta(seconds=30)
        runs.take()
        await estimate_start(queued, testbed.slurm)
        assert runs.take() == 1
    finally:
        await query.cancel(queued, testbed.slurm)


async def test_held_and_dependent_jobs_are_explained(testbed: Testbed) -> None:
    part = _env(testbed, "GPU_PARTITION", "gpu")
    held = await _sbatch(testbed, f"--partition={part}", "--hold", "--time=1", "--wrap=true")
    dep = await _sbatch(testbed, f"--partition={part}", f"--dependency=afterok:{held}",
                        "--time=1", "--wrap=true")
    try:
        h = await estimate_start(held, testbed.slurm)
        assert h.ok and h.state == "PENDING" and h.start is None and not h.starts_now
        assert h.reason is not None and h.reason.code == "JobHeldUser"
        assert "scontrol release" in h.reason.remedy
        assert "JobHeldUser" in h.describe()

        async def dependency():  # type: ignore[no-untyped-def]
            e = await estimate_start(dep, testbed.slurm)
            return e if e.reason is not None and e.reason.code == "Dependency" else None
        e = await until(dependency, 30, every=0.5, what="reason Dependency")
        assert "--dependency" in e.reason.meaning
    finally:
        await query.cancel(dep, testbed.slurm)
        await query.cancel(held, testbed.slurm)


async def test_refusals_and_unknown_jobs(testbed: Testbed) -> None:
    part = _env(testbed, "GPU_PARTITION", "gpu")
    per_node = int(_env(testbed, "GPUS_PER_NODE", "4"))
    too_big = SlurmJob(name="x", command="true", partition=part, gpus=per_node + 1)
    est = await estimate_start(too_big, testbed.slurm)
    assert not est.ok and est.start is None
    assert "Requested node configuration is not available" in est.ssh_result.stderr
    gone = await estimate_start(987654321, testbed.slurm)
    assert not gone.ok and "987654321 is not in squeue" in gone.ssh_result.stderr


async def test_each_query_is_one_remote_command(testbed: Testbed,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    runs = RunCounter(monkeypatch)
    nodes = _env(testbed, "NODES", "node1 node2 node3 node4").split()
    assert len(await query.nodes_info(nodes, testbed.slurm)) == len(nodes)
    assert runs.take() == 1
    await query.available_gpus(_env(testbed, "GPU_PARTITION", "gpu"), testbed.slurm)
    assert runs.take() == 1
    await query.job_info(987654321, testbed.slurm)  # unknown: sacct + squeue, together
    assert runs.take() == 1
    await estimate_start(SlurmJob(name="x", command="true"), testbed.slurm)
    assert runs.take() == 1
