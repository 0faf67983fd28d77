"""The ground every other test stands on: the testbed's sshd and SLURM cluster.

Plain asyncssh on purpose: these tests prove the testbed itself (sbatch with srun, a 2-node
job, sacct's final state, sinfo with GRES, scontrol, scancel), not the library's functions.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest

from ..conftest import ROOT, Testbed

FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")


@pytest.fixture(scope="module")
async def login(slurm_ready: Testbed) -> AsyncIterator[asyncssh.SSHClientConnection]:
    """One connection to the SLURM login host as the non-root test user."""
    tb = slurm_ready
    conn = await asyncssh.connect(
        "127.0.0.1",
        port=tb.ssh_port,
        username=tb.user,
        client_keys=[str(tb.client_key)],
        known_hosts=str(tb.known_hosts),
        config=[],  # never the user's ~/.ssh/config
    )
    try:
        yield conn
    finally:
        conn.close()
        await conn.wait_closed()


async def sh(conn: asyncssh.SSHClientConnection, cmd: str, stdin: str | None = None) -> str:
    """Run ``cmd`` on the login host; fail the test with its stderr if it fails."""
    res = await conn.run(cmd, input=stdin, check=False, timeout=60)
    assert res.exit_status == 0, f"{cmd!r} exited {res.exit_status}: {res.stderr!r}"
    return str(res.stdout)


async def sacct_main(conn: asyncssh.SSHClientConnection, job_id: str) -> dict[str, str]:
    """The job's own sacct row (no steps) as a dict; empty while slurmdbd has none yet."""
    fields = "JobID,JobName,Partition,State,ExitCode,NNodes,NodeList"
    out = await sh(conn, f"sacct -n -X -P -j {shlex.quote(job_id)} -o {fields}")
    rows = [line.split("|") for line in out.splitlines() if line.strip()]
    return dict(zip(fields.split(","), rows[0], strict=True)) if rows else {}


async def wait_final(
    conn: asyncssh.SSHClientConnection, job_id: str, timeout: float = 120
) -> dict[str, str]:
    """Poll sacct until the job reaches a final state with its full record (bounded).

    With slurmdbd, a job that ends within a few seconds of submission can first show up
    with the placeholder name "allocation" and no partition; the real record follows.
    """
    deadline = time.monotonic() + timeout
    row: dict[str, str] = {}
    while time.monotonic() < deadline:
        row = await sacct_main(conn, job_id)
        state = row.get("State", "").split(" ")[0]
        if state in FINAL_STATES and row.get("Partition"):
            return row
        await asyncio.sleep(0.5)
    pytest.fail(f"job {job_id} did not reach a final state in {timeout}s; last sacct row {row}")


async def test_two_node_job_completes_on_two_nodes(
    login: asyncssh.SSHClientConnection, slurm_ready: Testbed
) -> None:
    tb = slurm_ready
    out_file = f"testbed-2node-{uuid.uuid4().hex[:8]}.out"
    script = (
        "#!/bin/bash\n"
        f"#SBATCH --job-name=testbed-2node\n#SBATCH --nodes=2\n#SBATCH --ntasks-per-node=1\n"
        f"#SBATCH --partition={tb.cpu_partition}\n#SBATCH --output={out_file}\n"
        "srun printenv SLURMD_NODENAME\n"
    )
    job_id = (await sh(login, "sbatch --parsable", stdin=script)).strip().split(";")[0]
    assert job_id.isdigit(), job_id
    try:
        row = await wait_final(login, job_id)
        assert row["State"] == "COMPLETED", row
        assert row["ExitCode"] == "0:0", row
        assert row["JobName"] == "testbed-2node"
        assert row["Partition"] == tb.cpu_partition
        assert row["NNodes"] == "2"
        ran_on = (await sh(login, f"cat {out_file}")).split()
        assert sorted(ran_on) == sorted(tb.cpu_nodes), ran_on
        # The srun step is accounted too, on both nodes.
        steps = await sh(login, f"sacct -n -P -j {job_id} -o JobID,State,NNodes")
        assert f"{job_id}.0|COMPLETED|2" in steps.splitlines(), steps
    finally:
        await login.run(f"rm -f {out_file}", check=False)


async def test_sinfo_shows_partitions_and_gpu_gres(
    login: asyncssh.SSHClientConnection, slurm_ready: Testbed
) -> None:
    tb = slurm_ready
    out = await sh(login, "sinfo -h -o '%P|%G|%D|%N'")
    rows = {r.split("|")[0]: r.split("|")[1:] for r in out.splitlines()}
    default = f"{tb.default_partition}*"
    names = [p.rstrip("*") for p in rows]
    assert names == tb.partitions
    assert default in rows, rows
    gres, count, _ = rows[tb.gpu_partition]
    assert gres == f"gpu:{tb.gpu_type}:{tb.gpus_per_node}"
    assert int(count) == len(tb.gpu_nodes)
    assert rows[default][0] == "(null)"  # the cpu partition has no GPUs
    node = await sh(login, f"scontrol show node {tb.gpu_nodes[0]}")
    assert f"Gres=gpu:{tb.gpu_type}:{tb.gpus_per_node}" in node
    assert re.search(rf"CfgTRES=\S*gres/gpu={tb.gpus_per_node}", node), node


async def test_gpu_job_sees_its_gpus_and_scancel_ends_a_running_job(
    login: asyncssh.SSHClientConnection, slurm_ready: Testbed
) -> None:
    tb = slurm_ready
    job_id = (
        await sh(
            login,
            f"sbatch --parsable -J testbed-cancel -p {tb.gpu_partition} "
            f"--gres=gpu:{tb.gpu_type}:2 -o /dev/null --wrap 'srun sleep 300'",
        )
    ).strip()
    deadline = time.monotonic() + 60
    state = ""
    while time.monotonic() < deadline:
        state = (await sh(login, f"squeue -h -j {job_id} -o %T")).strip()
        if state == "RUNNING":
            break
        await asyncio.sleep(0.25)
    assert state == "RUNNING"
    alloc = await sh(login, f"scontrol show job {job_id}")
    assert re.search(r"\bTRES=\S*gres/gpu=2", alloc), alloc
    await sh(login, f"scancel {job_id}")
    row = await wait_final(login, job_id)
    assert row["State"].startswith("CANCELLED"), row


def test_status_lists_every_daemon_up_and_env_names_the_cluster(slurm_ready: Testbed) -> None:
    tb = slurm_ready
    script = ROOT / "scripts" / "testbed"
    proc = subprocess.run([str(script), "status"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    states = dict(line.split()[:2] for line in proc.stdout.splitlines())
    expected = ["sshd", "sshd-mfa", "wan-relay", "munged", "mariadb", "slurmdbd", "slurmctld"]
    expected += [f"slurmd-{n}" for n in tb.nodes]
    assert list(states) == expected
    assert set(states.values()) == {"up"}
    env = subprocess.run([str(script), "env"], capture_output=True, text=True, timeout=30).stdout
    exports = dict(
        shlex.split(line[len("export ") :])[0].split("=", 1)
        for line in env.splitlines()
        if line.startswith("export ")
    )
    assert exports["DISPATCH_TESTBED_PARTITIONS"].split() == tb.partitions
    assert exports["DISPATCH_TESTBED_GPU_TYPE"] == tb.gpu_type
    assert Path(exports["DISPATCH_TESTBED_SLURM_CONF"]).is_file()
    assert Path(exports["DISPATCH_TESTBED_MUNGE_SOCKET"]).is_socket()
