"""SLURM jobs on the testbed cluster: submit, status, cancel, wait for every final state,
multi-node, GPUs, packed code, dependencies, a second user, hostile values, shared waits.

The TIMEOUT job (1-minute limit, sleeps longer) is submitted by the first test and waited
for by the last one, so its ~60-90 s overlap the rest of the module.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dispatch.errors import InvalidValueError, SubmitError
from dispatch.slurm import poller, query
from dispatch.slurm.job import SlurmJob
from dispatch.slurm.models import JobInfoResult
from dispatch.slurm.poller import wait, wait_until_running
from dispatch.slurm.submission import submit, submit_packed
from dispatch.ssh.commands import run

from ..conftest import Testbed
from ..support.local import commit_tree
from ..support.remote import until

POLL = 0.5
# the submission module itself, for its helpers
submit_mod = importlib.import_module("dispatch.slurm.submission")
payload_mod = importlib.import_module("dispatch.slurm.payload")


def _env(testbed: Testbed, key: str, default: str) -> str:
    return testbed.env.get(f"DISPATCH_TESTBED_{key}", default)


@pytest.fixture(scope="module")
async def remote_dir(testbed: Testbed) -> AsyncIterator[str]:
    """A fresh directory in the test user's home on the SLURM host (all nodes see it)."""
    home = await submit_mod.remote_home(testbed.slurm)
    path = f"{home}/.dispatch-tests/{uuid.uuid4().hex[:10]}"
    assert (await run(["mkdir", "-p", f"{path}/out", f"{path}/share"], testbed.slurm)).ok
    yield path
    await run(["rm", "-rf", path], testbed.slurm)


async def _cat(host: str, path: str) -> str:
    result = await run(["cat", path], host)
    assert result.ok, result.stderr
    return result.stdout


def _job(testbed: Testbed, remote_dir: str, name: str, command: str, **kw: object) -> SlurmJob:
    kw.setdefault("partition", _env(testbed, "CPU_PARTITION", "cpu"))
    kw.setdefault("output", f"{remote_dir}/out/{name}-%j.out")
    return SlurmJob(name=name, command=command, **kw)  # type: ignore[arg-type]


def _out(remote_dir: str, name: str, job_id: int) -> str:
    return f"{remote_dir}/out/{name}-{job_id}.out"


def _state(info: JobInfoResult) -> str:
    assert info.main is not None, info
    return info.main.state


@pytest.fixture(scope="module")
async def timeout_job(testbed: Testbed, remote_dir: str) -> int:
    job = _job(testbed, remote_dir, "too-slow", "sleep 600", time="1")
    result = await submit(job, testbed.slurm)
    assert result.job_id is not None, result.ssh_result.stderr
    return result.job_id


async def test_pending_status_then_cancel(
    testbed: Testbed, remote_dir: str, timeout_job: int
) -> None:
    job = _job(testbed, remote_dir, "later", "true", extra_directives=["--begin=now+3600"])
    result = await submit(job, testbed.slurm)
    assert result.ok and result.job_id is not None, result.ssh_result.stderr
    st = await query.status(result.job_id, testbed.slurm)
    assert st.job is not None and st.job.state == "PENDING"
    assert st.job.name == "later" and st.job.user == testbed.user
    node, st = await wait_until_running(result.job_id, testbed.slurm, poll_interval=POLL,
                                        timeout=1.0)
    assert node is None and st.ssh_result.returncode == -1
    assert st.job is not None and st.job.state == "PENDING"  # the last state seen
    cancelled = await query.cancel(result.job_id, testbed.slurm)
    assert cancelled.ok and cancelled.stderr == "", cancelled
    info = await wait(result.job_id, testbed.slurm, poll_interval=POLL, timeout=60)
    assert _state(info) == "CANCELLED"
    # scancel itself exits 0 for these; cancel() reports them as failures
    again = await query.cancel(result.job_id, testbed.slurm)
    assert again.returncode == 1 and "error:" in again.stderr, again
    unknown = await query.cancel(99999999, testbed.slurm)
    assert unknown.returncode == 1 and "Invalid job id" in unknown.stderr, unknown


async def test_running_status_wait_until_running_and_wait_timeout(
    testbed: Testbed, remote_dir: str
) -> None:
    job = _job(testbed, remote_dir, "runner", "sleep 120")
    result = await submit(job, testbed.slurm)
    assert result.job_id is not None, result.ssh_result.stderr
    node, st = await wait_until_running(
        result.job_id, testbed.slurm, poll_interval=POLL, timeout=60
    )
    assert node in _env(testbed, "CPU_NODES", "node3 node4").split()
    assert st.job is not None and st.job.state == "RUNNING"
    st = await query.status(result.job_id, testbed.slurm)
    assert st.job is not None and st.job.state == "RUNNING"
    # timing out returns the last state seen, marked as a timeout
    info = await wait(result.job_id, testbed.slurm, poll_interval=POLL, timeout=1.5)
    assert info.ssh_result.returncode == -1 and "timed out" in info.ssh_result.stderr
    assert _state(info) == "RUNNING"
    assert (await query.cancel(result.job_id, testbed.slurm)).ok
    info = await wait(result.job_id, testbed.slurm, poll_interval=POLL, timeout=60)
    assert _state(info) == "CANCELLED"


async def test_wait_completed_and_failed(testbed: Testbed, remote_dir: str) -> None:
    ok = await submit(
        _job(testbed, remote_dir, "ok", "echo hello from $SLURM_JOB_ID"), testbed.slurm
    )
    bad = await submit(_job(testbed, remote_dir, "bad", "echo failing; exit 3"), testbed.slurm)
    assert ok.job_id is not None and bad.job_id is not None
    done_ok, done_bad = await asyncio.gather(
        wait(ok.job_id, testbed.slurm, poll_interval=POLL, timeout=90),
        wait(bad.job_id, testbed.slurm, poll_interval=POLL, timeout=90),
    )
    assert _state(done_ok) == "COMPLETED" and done_ok.main is not None
    assert done_ok.main.exit_code == "0:0"
    # the complete accounting row, not slurmdbd's early placeholder ("allocation", no partition)
    assert done_ok.main.name == "ok"
    assert done_ok.main.partition == _env(testbed, "CPU_PARTITION", "cpu")
    assert _state(done_bad) == "FAILED" and done_bad.main is not None
    assert done_bad.main.exit_code.startswith("3")
    assert f"hello from {ok.job_id}" in await _cat(testbed.slurm, _out(remote_dir, "ok", ok.job_id))
    # after the end, status says the job is gone or over -- never an error
    st = await query.status(ok.job_id, testbed.slurm)
    assert st.ssh_result.ok and (st.job is None or st.job.state == "COMPLETED")
    info = await query.job_info(ok.job_id, testbed.slurm)
    assert _state(info) == "COMPLETED"


async def test_two_node_job_runs_bootstrap_on_both_nodes(testbed: Testbed, remote_dir: str) -> None:
    job = _job(testbed, remote_dir, "two", 'echo "ran-on=$SLURMD_NODENAME"', nodes=2)
    result = await submit(job, testbed.slurm, share_dir=f"{remote_dir}/share")
    assert result.job_id is not None, result.ssh_result.stderr
    info = await wait(result.job_id, testbed.slurm, poll_interval=POLL, timeout=90)
    assert _state(info) == "COMPLETED"
    out = await _cat(testbed.slurm, _out(remote_dir, "two", result.job_id))
    ran = sorted(line.split("=", 1)[1] for line in out.splitlines() if line.startswith("ran-on="))
    assert ran == sorted(_env(testbed, "CPU_NODES", "node3 node4").split())
    # the scripts went to the share dir, 0700
    mine = f"{remote_dir}/share/.dispatch-{testbed.user}"
    ls = await run(f"stat -c '%a %n' {mine}/jobs/two-*/*.sh", testbed.slurm)
    assert ls.ok and ls.stdout.count("700 ") == 2, ls.stdout
    mode = await run(f"stat -c %a {mine}/jobs/two-*/", testbed.slurm)
    assert mode.stdout.strip() == "700"


async def test_gpu_job_sees_devices_and_available_gpus_drop(
    testbed: Testbed, remote_dir: str
) -> None:
    gpu = _env(testbed, "GPU_PARTITION", "gpu")
    per_node = int(_env(testbed, "GPUS_PER_NODE", "4"))
    flag = f"{remote_dir}/gpu-go"
    command = (
        'echo "CVD=$CUDA_VISIBLE_DEVICES"; '
        f"for i in $(seq 600); do [ -e {flag} ] && break; sleep 0.1; done"
    )
    job = _job(testbed, remote_dir, "gpu", command, partition=gpu, gpus=2)
    result = await submit(job, testbed.slurm)
    assert result.job_id is not None, result.ssh_result.stderr
    try:
        node, _ = await wait_until_running(
            result.job_id, testbed.slurm, poll_interval=POLL, timeout=60
        )
        assert node in _env(testbed, "GPU_NODES", "node1 node2").split()

        async def dropped() -> bool:
            # Other jobs may hold GPUs too (shared testbed): ours alone take 2 of this node,
            # and available_gpus must agree with scontrol's allocation count.
            free = dict(await query.available_gpus(gpu, testbed.slurm))
            info = await query.node_info(node, testbed.slurm)
            gres = info.get_gres("gpu") if info is not None else None
            assert gres is not None and gres.configured == per_node
            return gres.allocated >= 2 and free.get(node, 0) == per_node - gres.allocated

        await until(dropped)
    finally:
        await run(["touch", flag], testbed.slurm)
    info = await wait(result.job_id, testbed.slurm, poll_interval=POLL, timeout=60)
    assert _state(info) == "COMPLETED"
    out = await _cat(testbed.slurm, _out(remote_dir, "gpu", result.job_id))
    cvd = out.split("CVD=", 1)[1].split()[0]
    assert len(cvd.split(",")) == 2


@pytest.fixture
def git_repo(tmp_path: Path) -> Path:
    repo = commit_tree(tmp_path / "repo",
                       {"README.md": "hello\n", "pkg/main.py": "print('packed')\n"})
    (repo / "uncommitted.txt").write_text("not in HEAD\n")
    return repo


async def test_submit_packed_embedded_lists_repo_files(
    testbed: Testbed, remote_dir: str, git_repo: Path
) -> None:
    job = _job(testbed, remote_dir, "packed", "find . -type f -not -name '.dispatch*' | sort")
    result = await submit_packed(job, testbed.slurm, repo_path=str(git_repo))
    assert result.job_id is not None, result.ssh_result.stderr
    info = await wait(result.job_id, testbed.slurm, poll_interval=POLL, timeout=90)
    assert _state(info) == "COMPLETED"
    out = await _cat(testbed.slurm, _out(remote_dir, "packed", result.job_id))
    assert "./README.md" in out and "./pkg/main.py" in out
    assert "uncommitted.txt" not in out


async def test_packed_fallback_code_dirs_are_removed_after_the_job(
    testbed: Testbed, remote_dir: str, git_repo: Path
) -> None:
    """No SLURM_TMPDIR on the testbed: each node's ``$TMPDIR/dispatch-<job>-<host>`` (shared
    by the tasks there; on the testbed all nodes share one host, so all 4 tasks share one
    dir) is gone once the job is over, checked on every node by a later job."""
    nodes = 2
    job = _job(
        testbed, remote_dir, "cleanup", 'echo "dir=$(uname -n):$PWD"; cat pkg/main.py',
        nodes=nodes, ntasks_per_node=2,
    )
    result = await submit_packed(job, testbed.slurm, repo_path=str(git_repo))
    assert result.job_id is not None, result.ssh_result.stderr
    info = await wait(result.job_id, testbed.slurm, poll_interval=POLL, timeout=90)
    assert _state(info) == "COMPLETED"
    out = await _cat(testbed.slurm, _out(remote_dir, "cleanup", result.job_id))
    dirs = [line[4:] for line in out.splitlines() if line.startswith("dir=")]
    assert len(dirs) == 2 * nodes and out.count("print('packed')") == 2 * nodes, out
    assert all(f"/dispatch-{result.job_id}-" in d for d in dirs), dirs
    pattern = f'"${{TMPDIR:-/tmp}}"/dispatch-{result.job_id}-*'
    check = _job(
        testbed, remote_dir, "cleanup-check",
        f'echo "left=$(uname -n):$(ls -d {pattern} 2>/dev/null | wc -l)"',
        nodes=nodes, ntasks_per_node=1,
    )
    checked = await submit(check, testbed.slurm)
    assert checked.job_id is not None, checked.ssh_result.stderr
    info = await wait(checked.job_id, testbed.slurm, poll_interval=POLL, timeout=90)
    assert _state(info) == "COMPLETED"
    out = await _cat(testbed.slurm, _out(remote_dir, "cleanup-check", checked.job_id))
    left = sorted(line for line in out.splitlines() if line.startswith("left="))
    assert len(left) == nodes and all(line.endswith(":0") for line in left), out


async def _node_copies_left(testbed: Testbed, remote_dir: str, job_id: int) -> list[str]:
    """Run a job on 2 nodes listing ``${TMPDIR:-/tmp}/dispatch-<job_id>-*`` on each; one
    ``left=<node>:<count>`` line per node."""
    pattern = f'"${{TMPDIR:-/tmp}}"/dispatch-{job_id}-*'
    name = f"left-{job_id}"
    check = _job(
        testbed, remote_dir, name,
        f'echo "left=$SLURMD_NODENAME:$(ls -d {pattern} 2>/dev/null | wc -l)"', nodes=2,
    )
    checked = await submit(check, testbed.slurm)
    assert checked.job_id is not None, checked.ssh_result.stderr
    info = await wait(checked.job_id, testbed.slurm, poll_interval=POLL, timeout=90)
    assert _state(info) == "COMPLETED"
    out = await _cat(testbed.slurm, _out(remote_dir, name, checked.job_id))
    return sorted(line for line in out.splitlines() if line.startswith("left="))


async def _job_dir_files(host: str, base: str, name: str) -> list[str]:
    """``<mode> <file name>`` of each file in the one job dir called ``name-<token>``."""
    ls = await run(f"stat -c '%a %n' {base}/jobs/{name}-*/*", host)
    assert ls.ok, ls.stderr
    return sorted(f"{line.split()[0]} {line.rsplit('/', 1)[1]}" for line in ls.stdout.splitlines())


async def test_two_node_sbcast_job_runs_bootstrap_on_both_nodes(
    testbed: Testbed, remote_dir: str
) -> None:
    """No share dir: only the wrapper is uploaded; the bootstrap reaches both nodes by
    sbcast into a private node-local dir (the testbed's nodes share /tmp: the worst case,
    where a copy onto its own path would break), and the copies are gone afterwards."""
    name = f"sbc{uuid.uuid4().hex[:6]}"
    command = (
        'echo "ran-on=$SLURMD_NODENAME"; '
        'for d in "${TMPDIR:-/tmp}"/dispatch-"$SLURM_JOB_ID"-*/; do '
        'echo "copy=$(stat -c %a "$d") $(ls "$d")"; done'
    )
    job = _job(testbed, remote_dir, name, command, nodes=2, ntasks_per_node=2)
    result = await submit(job, testbed.slurm, sbcast=True)
    assert result.job_id is not None, result.ssh_result.stderr
    info = await wait(result.job_id, testbed.slurm, poll_interval=POLL, timeout=90)
    assert _state(info) == "COMPLETED"
    out = await _cat(testbed.slurm, _out(remote_dir, name, result.job_id))
    ran = sorted(line.split("=", 1)[1] for line in out.splitlines() if line.startswith("ran-on="))
    nodes = sorted(_env(testbed, "CPU_NODES", "node3 node4").split())
    assert ran == sorted(nodes * 2), out  # two tasks per node
    copies = [line for line in out.splitlines() if line.startswith("copy=")]
    assert copies and all(line == "copy=700 bootstrap.sh" for line in copies), out
    home = await submit_mod.remote_home(testbed.slurm)
    assert await _job_dir_files(testbed.slurm, f"{home}/.dispatch", name) == ["700 sbatch.sh"]
    left = await _node_copies_left(testbed, remote_dir, result.job_id)
    assert [line.split(":")[1] for line in left] == ["0", "0"], left
    staged = await run(f"ls -d /tmp/dispatch-{result.job_id}-* 2>/dev/null | wc -l", testbed.slurm)
    assert staged.stdout.strip() == "0"


async def test_submit_packed_sbcast_lists_repo_files_on_both_nodes(
    testbed: Testbed, remote_dir: str, git_repo: Path
) -> None:
    command = 'echo "node=$SLURMD_NODENAME"; find . -type f -not -name ".dispatch*" | sort'
    nodes = sorted(_env(testbed, "CPU_NODES", "node3 node4").split())
    home = await submit_mod.remote_home(testbed.slurm)
    share = f"{remote_dir}/share"
    for label, share_dir in (("embedded", None), ("shared", share)):
        name = f"psbc-{label}-{uuid.uuid4().hex[:6]}"
        job = _job(testbed, remote_dir, name, command, nodes=2)
        result = await submit_packed(
            job, testbed.slurm, repo_path=str(git_repo), share_dir=share_dir, sbcast=True
        )
        assert result.job_id is not None, result.ssh_result.stderr
        info = await wait(result.job_id, testbed.slurm, poll_interval=POLL, timeout=90)
        assert _state(info) == "COMPLETED", label
        out = await _cat(testbed.slurm, _out(remote_dir, name, result.job_id))
        seen = sorted(line[5:] for line in out.splitlines() if line.startswith("node="))
        assert seen == nodes, out
        assert out.count("./README.md") == 2 and out.count("./pkg/main.py") == 2, out
        assert "uncommitted.txt" not in out
        base = f"{share}/.dispatch-{testbed.user}" if share_dir else f"{home}/.dispatch"
        assert await _job_dir_files(testbed.slurm, base, name) == ["700 sbatch.sh"]
        if share_dir is not None:
            # share_dir takes precedence for the payload: uploaded (cached) there.
            ls = await run(f"ls {base}/payloads/", testbed.slurm)
            assert ls.ok and ".tar.gz" in ls.stdout
        left = await run(f"ls -d /tmp/dispatch-{result.job_id}-* 2>/dev/null | wc -l",
                         testbed.slurm)
        assert left.stdout.strip() == "0", label


async def test_successful_submit_prunes_old_job_dirs_of_finished_jobs(
    testbed: Testbed, remote_dir: str
) -> None:
    """Dirs older than 7 days go, unless squeue still lists their job (a held job here)."""
    share = f"{remote_dir}/prune-{uuid.uuid4().hex[:6]}"
    assert (await run(["mkdir", "-p", share], testbed.slurm)).ok
    held = await submit(
        _job(testbed, remote_dir, "prune-held", "true", extra_directives=["--hold"]),
        testbed.slurm, share_dir=share,
    )
    assert held.job_id is not None, held.ssh_result.stderr
    try:
        jobs = f"{share}/.dispatch-{testbed.user}/jobs"
        ls = await run(f"ls -d {jobs}/prune-held-*", testbed.slurm)
        assert ls.ok, ls
        held_dir = ls.stdout.strip()
        stale, fresh = f"{jobs}/stale-0123456789abcdef", f"{jobs}/fresh-0123456789abcdef"
        prep = await run(
            f"mkdir -m 700 {stale} {fresh} && touch {stale}/sbatch.sh && "
            f"touch -d '10 days ago' {stale} {held_dir}", testbed.slurm,
        )
        assert prep.ok, prep
        new = await submit(
            _job(testbed, remote_dir, "prune-new", "true"), testbed.slurm, share_dir=share
        )
        assert new.job_id is not None, new.ssh_result.stderr
        assert new.ssh_result.stdout.strip() == str(new.job_id), new.ssh_result
        left = await run(f"ls {jobs}", testbed.slurm)
        names = left.stdout.split()
        assert "stale-0123456789abcdef" not in names, names
        assert "fresh-0123456789abcdef" in names, names
        assert held_dir.rsplit("/", 1)[1] in names, names
        assert any(n.startswith("prune-new-") for n in names), names
    finally:
        await query.cancel(held.job_id, testbed.slurm)


async def test_submit_packed_share_dir_uploads_payload_once(
    testbed: Testbed, remote_dir: str, git_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    share = f"{remote_dir}/share"
    uploads: list[str] = []
    real_write = submit_mod.write_file

    async def counting(host: str, path: str, data: bytes, **kw: object):  # type: ignore[no-untyped-def]
        uploads.append(path)
        return await real_write(host, path, data, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(submit_mod, "write_file", counting)
    monkeypatch.setattr(payload_mod, "write_file", counting)  # the payload upload's
    job = _job(testbed, remote_dir, "shared", "cat pkg/main.py")
    ids = []
    for _ in range(2):
        result = await submit_packed(job, testbed.slurm, repo_path=str(git_repo), share_dir=share)
        assert result.job_id is not None, result.ssh_result.stderr
        ids.append(result.job_id)
    payloads = [p for p in uploads if f"/.dispatch-{testbed.user}/payloads/" in p]
    assert len(payloads) == 1 and payloads[0].endswith(".tar.gz")
    for job_id in ids:
        info = await wait(job_id, testbed.slurm, poll_interval=POLL, timeout=90)
        assert _state(info) == "COMPLETED"
        assert "print('packed')" in await _cat(testbed.slurm, _out(remote_dir, "shared", job_id))


async def test_dirty_snapshot_includes_uncommitted_changes(
    testbed: Testbed, remote_dir: str, git_repo: Path
) -> None:
    (git_repo / "README.md").write_text("changed\n")
    job = _job(testbed, remote_dir, "dirty", "cat README.md")
    result = await submit_packed(job, testbed.slurm, repo_path=str(git_repo), dirty=True)
    assert result.job_id is not None, result.ssh_result.stderr
    info = await wait(result.job_id, testbed.slurm, poll_interval=POLL, timeout=90)
    assert _state(info) == "COMPLETED"
    assert "changed" in await _cat(testbed.slurm, _out(remote_dir, "dirty", result.job_id))


async def test_dependency_afterok(testbed: Testbed, remote_dir: str) -> None:
    flag = f"{remote_dir}/dep-go"
    first = await submit(
        _job(testbed, remote_dir, "first",
             f"for i in $(seq 600); do [ -e {flag} ] && break; sleep 0.1; done; echo first"),
        testbed.slurm,
    )
    assert first.job_id is not None
    second = await submit(
        _job(testbed, remote_dir, "second", "echo second", dependency=f"afterok:{first.job_id}"),
        testbed.slurm,
    )
    assert second.job_id is not None, second.ssh_result.stderr
    await wait_until_running(first.job_id, testbed.slurm, poll_interval=POLL, timeout=60)
    st = await query.status(second.job_id, testbed.slurm)
    assert st.job is not None and st.job.state == "PENDING" and "Dependency" in st.job.nodelist
    await run(["touch", flag], testbed.slurm)
    a, b = await asyncio.gather(
        wait(first.job_id, testbed.slurm, poll_interval=POLL, timeout=90),
        wait(second.job_id, testbed.slurm, poll_interval=POLL, timeout=90),
    )
    assert _state(a) == "COMPLETED" and _state(b) == "COMPLETED"


async def test_job_as_second_non_root_user(testbed: Testbed) -> None:
    home = await submit_mod.remote_home(testbed.plain2)
    job = SlurmJob(name="user2", command="id -un", partition=_env(testbed, "CPU_PARTITION", "cpu"),
                   output=f"{home}/dispatch-user2-%j.out")
    result = await submit(job, testbed.plain2)
    assert result.job_id is not None, result.ssh_result.stderr
    try:
        info = await wait(result.job_id, testbed.plain2, poll_interval=POLL, timeout=90)
        assert _state(info) == "COMPLETED"
        out = await _cat(testbed.plain2, f"{home}/dispatch-user2-{result.job_id}.out")
        assert out.strip() == testbed.user2
    finally:
        await run(f"rm -f ~/dispatch-user2-{result.job_id}.out", testbed.plain2)


async def test_hostile_job_name_and_env_values(testbed: Testbed, remote_dir: str) -> None:
    for bad in ["x\n#SBATCH --partition=evil", "a\rb"]:
        with pytest.raises(InvalidValueError):
            await submit(_job(testbed, remote_dir, bad, "true"), testbed.slurm)
    weird = "a b 'c' \"d\" $HOME `id` $(id) \\ ; * & | < > ! \t end"
    name = "odd name 'q' $x"
    job = _job(testbed, remote_dir, name, 'printf "<%s>" "$WEIRD"', env={"WEIRD": weird},
               output=f"{remote_dir}/out/odd-%j.out")
    result = await submit(job, testbed.slurm)
    assert result.job_id is not None, result.ssh_result.stderr
    st = await query.status(result.job_id, testbed.slurm)
    assert st.job is None or st.job.name == name
    info = await wait(result.job_id, testbed.slurm, poll_interval=POLL, timeout=90)
    assert _state(info) == "COMPLETED"
    assert f"<{weird}>" in await _cat(testbed.slurm, f"{remote_dir}/out/odd-{result.job_id}.out")


async def _job_dirs(host: str, base: str, name: str) -> list[str]:
    ls = await run(f"ls -d {base}/.dispatch*/jobs/{name}-* 2>/dev/null || true", host)
    return ls.stdout.split()


async def test_failed_submit_leaves_no_files(testbed: Testbed, remote_dir: str) -> None:
    name = f"rejected{uuid.uuid4().hex[:6]}"
    home = await submit_mod.remote_home(testbed.slurm)
    for share in (None, f"{remote_dir}/share"):
        job = _job(testbed, remote_dir, name, "true", partition="nosuchpartition")
        result = await submit(job, testbed.slurm, share_dir=share)
        assert result.job_id is None and not result.ok
        assert "partition" in result.ssh_result.stderr.lower()
        assert await _job_dirs(testbed.slurm, share or home, name) == []
    prefix = f"{remote_dir}/explicit-{name}"
    result = await submit(_job(testbed, remote_dir, name, "true", partition="nosuchpartition"),
                          testbed.slurm, script_path=prefix)
    assert result.job_id is None
    ls = await run(f"ls {prefix}* 2>/dev/null || true", testbed.slurm)
    assert ls.stdout.strip() == ""


async def test_unreachable_host_is_a_result_not_an_exception(
    testbed: Testbed, git_repo: Path
) -> None:
    """Like every remote failure: job_id=None and ssh's 255 message naming the host."""
    bad = f"{testbed.slurm}:1"  # the testbed config maps every name to loopback: refused
    job = SlurmJob(name="nowhere", command="true")
    for result in (await submit(job, bad),
                   await submit_packed(job, bad, repo_path=str(git_repo))):
        assert result.job_id is None and not result.ok
        assert result.ssh_result.returncode == 255
        assert "port 1: Connection refused" in result.ssh_result.stderr, result


async def test_too_large_script_raises_before_upload(testbed: Testbed, remote_dir: str) -> None:
    name = f"huge{uuid.uuid4().hex[:6]}"
    job = _job(testbed, remote_dir, name, "true").pack(os.urandom(5 * 1024 * 1024))
    with pytest.raises(SubmitError, match="share_dir"):
        await submit(job, testbed.slurm)
    with pytest.raises(SubmitError, match="sbcast"):
        await submit(job, testbed.slurm, sbcast=True)
    home = await submit_mod.remote_home(testbed.slurm)
    assert await _job_dirs(testbed.slurm, home, name) == []


async def test_fifty_concurrent_waits_share_one_squeue_call_per_interval(testbed: Testbed) -> None:
    parts = f"{_env(testbed, 'CPU_PARTITION', 'cpu')},{_env(testbed, 'GPU_PARTITION', 'gpu')}"
    script = (
        f"for i in $(seq 50); do sbatch --parsable --partition={parts} --output=/dev/null "
        "--job-name=fifty --wrap 'sleep 1' || exit 1; done"
    )
    out = await run(script, testbed.slurm)
    assert out.ok, out.stderr
    ids = [int(line.split(";")[0]) for line in out.stdout.split()]
    assert len(ids) == 50
    stats = poller.poller_stats(testbed.slurm)
    calls0, started0 = stats.squeue_calls, stats.pollers_started
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    infos = await asyncio.gather(
        *(wait(j, testbed.slurm, poll_interval=POLL, timeout=180) for j in ids)
    )
    elapsed = loop.time() - t0
    assert [_state(i) for i in infos] == ["COMPLETED"] * 50
    calls = stats.squeue_calls - calls0
    # one squeue per interval for all 50 (plus the first poll), not 50 per interval
    assert calls <= elapsed / POLL + 3, (calls, elapsed)
    assert stats.pollers_started - started0 == 1

    async def stopped() -> bool:
        return stats.active_pollers == 0

    await until(stopped, timeout=5, every=0.05)  # no waiters left: the poller task ends


async def test_cancelling_a_wait_stops_the_poller(testbed: Testbed, remote_dir: str) -> None:
    job = _job(testbed, remote_dir, "held", "true", extra_directives=["--begin=now+3600"])
    result = await submit(job, testbed.slurm)
    assert result.job_id is not None
    stats = poller.poller_stats(testbed.slurm)
    before = stats.squeue_calls
    task = asyncio.create_task(wait(result.job_id, testbed.slurm, poll_interval=0.2))

    async def polled() -> bool:
        return stats.squeue_calls >= before + 2

    await until(polled, timeout=15, every=0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    async def stopped() -> bool:
        return stats.active_pollers == 0

    await until(stopped, timeout=5, every=0.05)
    settled = stats.squeue_calls
    await asyncio.sleep(0.6)  # three would-be intervals: nothing may poll any more
    assert stats.squeue_calls == settled
    await query.cancel(result.job_id, testbed.slurm)


async def test_wait_for_timeout_state(testbed: Testbed, timeout_job: int) -> None:
    """Last on purpose: the job (limit 1 min) was submitted by the first test."""
    info = await wait(timeout_job, testbed.slurm, poll_interval=1.0, timeout=240)
    assert _state(info) == "TIMEOUT"


@pytest.mark.parametrize("trap", ["foreign-dir", "symlink", "world-writable-own"])
async def test_foreign_or_open_per_user_dir_in_shared_dir_is_refused(
    testbed: Testbed, trap: str
) -> None:
    """In a 1777 scratch dir, ``.dispatch-<user>`` made by someone else (or a symlink, or
    our own but world-writable) is refused before anything is uploaded."""
    shared = f"/tmp/dispatch-sticky-{uuid.uuid4().hex[:8]}"
    assert (await run(f"mkdir -m 1777 {shared} && chmod 1777 {shared}", testbed.slurm)).ok
    mine = f"{shared}/.dispatch-{testbed.user}"
    try:
        if trap == "foreign-dir":
            setup = await run(f"mkdir -m 777 {mine} && chmod 777 {mine}", testbed.plain2)
            owner = testbed.user2
        elif trap == "symlink":
            setup = await run(f"mkdir -m 700 {shared}/x && ln -s x {mine}", testbed.plain2)
            owner = testbed.user2
        else:
            setup = await run(f"mkdir {mine} && chmod 777 {mine}", testbed.slurm)
            owner = testbed.user
        assert setup.ok, setup
        job = SlurmJob(name="refused", command="true", partition="cpu", time="1")
        result = await submit(job, testbed.slurm, share_dir=shared)
        assert result.job_id is None and not result.ok, result
        err = result.ssh_result.stderr
        assert mine in err and f"owner {owner}" in err, err
        for host in (testbed.slurm, testbed.plain2):  # (user 2's dirs as user 2)
            listing = await run(f"find {shared} -mindepth 1 -type f 2>/dev/null", host)
            assert listing.stdout.strip() == "", listing
    finally:
        await run(f"rm -rf {shared}", testbed.plain2)
        await run(f"rm -rf {shared}", testbed.slurm)
