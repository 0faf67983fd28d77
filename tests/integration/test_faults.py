"""Faults, injected for real: partitions, cut connections, dead hosts, full and read-only
disks, a killed client, a restarted slurmctld and a stopped slurmdbd.

Partitions go through :class:`tests.support.relay.Relay`, a TCP relay between the client
and the testbed sshd that can stop forwarding silently (no RST, sockets stay open). Each
test uses its own scoped ``dispatch.aio.Pool`` on a private ssh config that points extra
aliases at the relay, tarpit and slow-auth servers; host-key checking stays on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import dispatch.aio as dx

from ..conftest import Testbed
from ..support import report
from ..support.faults import (
    apoll,
    daemon_down,
    fault_pool_kwargs,
    full_dir,
    kill_all,
    readonly_dir,
    sshd_pids_serving,
    start_testbed,
)
from ..support.local import commit_tree
from ..support.netns import blackhole_address
from ..support.relay import Relay, SlowAuth, StallingSSHServer, Tarpit
from ..support.remote import poll_until
from ..support.sshconf import Alias

# Keepalive settings for partition tests: a dead peer is noticed after about
# KEEPALIVE * (COUNT + 1) seconds; every bound below is generous on top of that.
KEEPALIVE = 1.0
KEEPALIVE_COUNT = 2
CONNECT_TIMEOUT = 3
DETECT_BOUND = KEEPALIVE * (KEEPALIVE_COUNT + 1) + CONNECT_TIMEOUT + 10.0

# Counted for the issue note.
FAULTS = report.section("fault")


@pytest.fixture
def relay(testbed: Testbed) -> Iterator[Relay]:
    r = Relay(testbed.ssh_port)
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
async def fpool(testbed: Testbed, tmp_path: Path, relay: Relay) -> AsyncIterator[dx.Pool]:
    """A scoped pool with short keepalives whose ssh config has ``relayhost`` -> relay."""
    _, kw = fault_pool_kwargs(testbed, tmp_path, [Alias("relayhost", relay.port)],
                              connect_timeout=CONNECT_TIMEOUT)
    async with dx.Pool(keepalive_interval=KEEPALIVE, keepalive_count_max=KEEPALIVE_COUNT,
                       **kw) as pool:
        yield pool


def _count_lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except FileNotFoundError:
        return 0


@pytest.fixture
def marker_dir(testbed: Testbed) -> Iterator[Path]:
    """A directory the test user can write (same machine as the testbed sshd)."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="dispatch-faults-"))
    shutil.chown(d, testbed.user, testbed.user)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# partitions and cut connections (through the relay)
# ---------------------------------------------------------------------------------------


async def test_relay_carries_pooled_calls(fpool: dx.Pool, relay: Relay) -> None:
    for i in range(5):
        res = await dx.run(["echo", str(i)], "relayhost", timeout=30)
        assert res.ok and res.stdout == f"{i}\n", res
    assert relay.accepted == 1  # one pooled connection carried all five


async def test_partition_mid_command_fails_within_keepalive_bound_not_rerun(
        fpool: dx.Pool, relay: Relay, marker_dir: Path) -> None:
    mark = marker_dir / "started"
    task = asyncio.ensure_future(
        dx.run(f"echo x >> {mark}; sleep 60; echo finished", "relayhost"))
    assert await apoll(lambda: _async(mark.exists()), 30), "command never started"
    relay.freeze()
    t0 = time.monotonic()
    res = await asyncio.wait_for(task, DETECT_BOUND + 30)
    elapsed = time.monotonic() - t0
    assert elapsed < DETECT_BOUND, f"partition noticed only after {elapsed:.1f}s"
    assert res.returncode == 255 and res.may_have_run, res
    assert "may have run" in res.stderr and "relayhost" in res.stderr, res.stderr
    assert "finished" not in res.stdout
    relay.heal()
    after = await dx.run("echo healed", "relayhost", timeout=30)
    assert after.ok and after.stdout == "healed\n", after
    assert _count_lines(mark) == 1, "the interrupted command was re-run"
    FAULTS["partition mid-command"] = f"failed after {elapsed:.1f}s, may_have_run, not re-run"


async def _async(value: bool) -> bool:
    return value


async def test_partition_at_idle_fails_within_bound_then_recovers(
        fpool: dx.Pool, relay: Relay) -> None:
    assert (await dx.run("true", "relayhost", timeout=30)).ok  # connection now pooled, idle
    relay.freeze()
    t0 = time.monotonic()
    res = await asyncio.wait_for(dx.run("echo hi", "relayhost"), DETECT_BOUND + 30)
    elapsed = time.monotonic() - t0
    assert elapsed < DETECT_BOUND, f"idle partition noticed only after {elapsed:.1f}s"
    assert not res.ok and res.returncode == 255, res
    assert "relayhost" in res.stderr or "127.0.0.1" in res.stderr, res.stderr
    relay.heal()
    after = await dx.run("echo healed", "relayhost", timeout=30)
    assert after.ok and after.stdout == "healed\n", after
    FAULTS["partition at idle"] = f"failed after {elapsed:.1f}s; next call after heal ok"


async def test_partition_mid_upload_fails_within_bound_leaving_no_final_file(
        fpool: dx.Pool, relay: Relay, marker_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(64 * 1024 * 1024))
    target = marker_dir / "big.bin"
    task = asyncio.ensure_future(dx.copy_to(src, "relayhost", str(target)))

    async def temp_growing() -> bool:
        return any(p.name != "big.bin" and p.stat().st_size > 0 for p in marker_dir.iterdir())

    assert await apoll(temp_growing, 60, 0.002), "upload never started"
    relay.freeze()
    t0 = time.monotonic()
    res = await asyncio.wait_for(task, DETECT_BOUND + 30)
    elapsed = time.monotonic() - t0
    relay.heal()
    assert not res.ok and res.stderr.strip(), res
    assert elapsed < DETECT_BOUND, f"partitioned upload noticed only after {elapsed:.1f}s"
    assert not target.exists(), "final path exists after a failed upload"
    FAULTS["partition mid-upload (copy_to 64 MB)"] = (
        f"rc={res.returncode} after {elapsed:.1f}s, no final file")


async def test_partition_bounded_by_run_timeout_without_keepalive(
        testbed: Testbed, tmp_path: Path, relay: Relay) -> None:
    _, kw = fault_pool_kwargs(testbed, tmp_path, [Alias("relayhost", relay.port)],
                              connect_timeout=CONNECT_TIMEOUT)
    async with dx.Pool(keepalive_interval=None, keepalive_count_max=None, **kw):
        assert (await dx.run("true", "relayhost", timeout=30)).ok
        relay.freeze()
        t0 = time.monotonic()
        res = await asyncio.wait_for(dx.run("sleep 60", "relayhost", timeout=3), 60)
        elapsed = time.monotonic() - t0
        assert res.returncode == -1 and "timed out" in res.stderr, res
        assert elapsed < 3 + 15, f"run(timeout=3) returned after {elapsed:.1f}s"
        relay.heal()
    FAULTS["partition, no keepalive, run(timeout=3)"] = f"returned -1 after {elapsed:.1f}s"


async def test_cut_mid_command_reports_may_have_run_and_is_not_rerun(
        fpool: dx.Pool, relay: Relay, marker_dir: Path) -> None:
    mark = marker_dir / "started"
    task = asyncio.ensure_future(
        dx.run(f"echo x >> {mark}; sleep 60; echo finished", "relayhost", timeout=120))
    assert await apoll(lambda: _async(mark.exists()), 30), "command never started"
    relay.close_connections(rst=True)
    res = await asyncio.wait_for(task, 60)
    assert res.returncode == 255 and res.may_have_run, res
    assert "may have run" in res.stderr, res.stderr
    assert _count_lines(mark) == 1, "the interrupted command was re-run"
    after = await dx.run("echo again", "relayhost", timeout=30)
    assert after.ok, after
    assert _count_lines(mark) == 1
    FAULTS["connection cut (RST) mid-command"] = "may_have_run, not re-run, next call ok"


async def test_sshd_session_killed_mid_command_reports_may_have_run_not_rerun(
        testbed: Testbed, fpool: dx.Pool, relay: Relay, marker_dir: Path) -> None:
    """The real daemon variant: SIGKILL the sshd processes serving *our* connection only."""
    mark = marker_dir / "started"
    task = asyncio.ensure_future(
        dx.run(f"echo x >> {mark}; sleep 60; echo finished", "relayhost", timeout=120))
    assert await apoll(lambda: _async(mark.exists()), 30), "command never started"
    assert len(relay.upstream_ports) == 1
    pids = sshd_pids_serving(relay.upstream_ports[0], testbed.ssh_port)
    assert pids, "no sshd process found for our connection"
    sshd_master = int((testbed.state_dir / "pids" / "sshd.pid").read_text())
    assert sshd_master not in pids  # never the listening daemon
    kill_all(pids)
    res = await asyncio.wait_for(task, 60)
    assert res.returncode == 255 and res.may_have_run, res
    assert "may have run" in res.stderr, res.stderr
    assert _count_lines(mark) == 1, "the interrupted command was re-run"
    after = await dx.run("echo again", "relayhost", timeout=30)
    assert after.ok, after
    FAULTS["sshd session processes SIGKILLed mid-command"] = (
        f"killed {len(pids)} sshd pids; may_have_run, not re-run, next call ok")


async def test_explicit_retries_do_rerun_after_cut(
        fpool: dx.Pool, relay: Relay, marker_dir: Path) -> None:
    """The counterpart: with retries=1 the caller asked for a re-run, and gets one."""
    mark = marker_dir / "started"
    cmd = f"echo x >> {mark}; [ $(wc -l < {mark}) -ge 2 ] || sleep 60; echo done"
    task = asyncio.ensure_future(dx.run(cmd, "relayhost", timeout=120, retries=1))
    assert await apoll(lambda: _async(mark.exists()), 30)
    relay.close_connections(rst=True)
    res = await asyncio.wait_for(task, 90)
    assert res.ok and res.stdout.endswith("done\n"), res
    assert _count_lines(mark) == 2


async def test_connection_cut_at_idle_reconnects_by_itself(
        fpool: dx.Pool, relay: Relay) -> None:
    assert (await dx.run("true", "relayhost", timeout=30)).ok
    relay.close_connections(rst=False)  # like sshd restarted between calls
    res = await dx.run("echo back", "relayhost", timeout=30)
    assert res.ok and res.stdout == "back\n", res
    assert relay.accepted == 2
    FAULTS["connection closed between calls"] = "next call reconnected by itself"


# ---------------------------------------------------------------------------------------
# dead hosts: tarpit, slow auth, closed port, blackhole - alone and inside run_many
# ---------------------------------------------------------------------------------------


DeadHost = tuple[str, int, str, list[str]]  # kind, port, address, known_hosts lines


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(params=["tarpit", "slow-auth", "stalled-userauth", "closed-port",
                        "blackhole-relay", "netns-blackhole"])
def dead_host(request: pytest.FixtureRequest,
              testbed: Testbed) -> Iterator[DeadHost]:
    kind = request.param
    server: Any = None
    if kind == "netns-blackhole":
        with blackhole_address() as addr:
            yield kind, 22, addr, []
        return
    if kind == "stalled-userauth":
        stalling = StallingSSHServer()
        try:
            yield kind, stalling.port, "127.0.0.1", [stalling.known_hosts_line]
        finally:
            assert stalling.auth_attempts >= 1, "the client never reached user auth"
            stalling.stop()
        return
    if kind == "tarpit":
        server = Tarpit()
        port = server.port
    elif kind == "slow-auth":
        server = SlowAuth()
        port = server.port
    elif kind == "closed-port":
        port = _closed_port()
    else:
        server = Relay(testbed.ssh_port)
        server.freeze()  # frozen before the banner: TCP accepted, then silence
        port = server.port
    try:
        yield kind, port, "127.0.0.1", []
    finally:
        if server is not None:
            server.stop()


async def test_dead_host_is_bounded_by_its_timeout(
        testbed: Testbed, tmp_path: Path, dead_host: DeadHost) -> None:
    kind, port, addr, trusted = dead_host
    _, kw = fault_pool_kwargs(testbed, tmp_path, [Alias("deadhost", port, hostname=addr)],
                              connect_timeout=CONNECT_TIMEOUT, known_hosts_extra=trusted)
    async with dx.Pool(**kw):
        t0 = time.monotonic()
        res = await asyncio.wait_for(dx.run("true", "deadhost"), 120)
        elapsed = time.monotonic() - t0
    assert res.returncode == 255 and not res.may_have_run, res
    assert res.stderr.strip(), "no error message"
    bound = CONNECT_TIMEOUT * 2 + 10
    assert elapsed < bound, f"{kind}: took {elapsed:.1f}s (bound {bound}s)"
    FAULTS[f"dead host: {kind}"] = f"255 after {elapsed:.1f}s: {res.stderr.strip()[:90]}"


async def test_dead_host_bounded_by_run_timeout(
        testbed: Testbed, tmp_path: Path, dead_host: DeadHost) -> None:
    """``run(timeout=2)`` bounds the whole call even if ConnectTimeout is long."""
    kind, port, addr, trusted = dead_host
    _, kw = fault_pool_kwargs(testbed, tmp_path, [Alias("deadhost", port, hostname=addr)],
                              connect_timeout=60, known_hosts_extra=trusted)
    async with dx.Pool(**kw):
        t0 = time.monotonic()
        res = await asyncio.wait_for(dx.run("true", "deadhost", timeout=2), 120)
        elapsed = time.monotonic() - t0
    assert not res.ok and res.returncode in (-1, 255), res
    assert elapsed < 2 + 8, f"{kind}: run(timeout=2) took {elapsed:.1f}s"


async def test_run_many_with_one_dead_host_returns_every_other_result(
        testbed: Testbed, tmp_path: Path, dead_host: DeadHost) -> None:
    kind, port, addr, trusted = dead_host
    _, kw = fault_pool_kwargs(testbed, tmp_path, [Alias("deadhost", port, hostname=addr)],
                              connect_timeout=CONNECT_TIMEOUT, known_hosts_extra=trusted)
    fleet = testbed.fleet[:20]
    async with dx.Pool(**kw):
        t0 = time.monotonic()
        results = await asyncio.wait_for(
            dx.run_many(["sh", "-c", "echo $0", "ok"], [*fleet, "deadhost"]), 120)
        elapsed = time.monotonic() - t0
    assert set(results) == {*fleet, "deadhost"}
    bad = {h: r for h, r in results.items() if h != "deadhost" and not r.ok}
    assert not bad, bad
    assert all(results[h].stdout == "ok\n" for h in fleet)
    assert results["deadhost"].returncode == 255
    assert elapsed < CONNECT_TIMEOUT * 2 + 30, f"run_many took {elapsed:.1f}s"
    FAULTS[f"run_many 20 fleet + {kind}"] = f"20/20 ok, dead=255, {elapsed:.1f}s"


# ---------------------------------------------------------------------------------------
# remote disk full / permission denied during copy_to and ship
# ---------------------------------------------------------------------------------------


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


async def test_copy_to_disk_full_leaves_nothing(testbed: Testbed, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024))
    with full_dir(testbed.user, "1m") as d:
        res = await dx.copy_to(src, testbed.plain, f"{d}/big.bin", timeout=60)
        assert not res.ok, res
        assert res.stderr.strip(), "no error message"
        assert _tree(d) == [], f"left behind: {_tree(d)}"
    FAULTS["copy_to onto full disk"] = f"rc={res.returncode}: {res.stderr.strip()[:90]}"


@pytest.mark.parametrize("kind", ["copy_to", "ship"])
async def test_disk_full_error_says_no_space(testbed: Testbed, tmp_path: Path,
                                             kind: str) -> None:
    """"Clear error": the message must say the remote disk is full, not just "Failure"."""
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024))
    with full_dir(testbed.user, "1m") as d:
        if kind == "copy_to":
            res = await dx.copy_to(src, testbed.plain, f"{d}/big.bin", timeout=60)
        else:
            res = await dx.ship(testbed.plain, f"{d}/code",
                                repo_path=_git_repo(tmp_path, 3 * 1024 * 1024), timeout=60)
    assert not res.ok
    assert "space" in res.stderr.lower(), f"{kind}: unclear disk-full error: {res.stderr!r}"


async def test_copy_to_disk_full_keeps_previous_file_intact(
        testbed: Testbed, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024))
    with full_dir(testbed.user, "1m") as d:
        old = d / "big.bin"
        old.write_bytes(b"previous content\n")
        os.chown(old, *_ids(testbed.user))
        res = await dx.copy_to(src, testbed.plain, str(old), timeout=60)
        assert not res.ok, res
        assert old.read_bytes() == b"previous content\n"
        assert _tree(d) == ["big.bin"], f"left behind: {_tree(d)}"


def _ids(user: str) -> tuple[int, int]:
    import pwd

    pw = pwd.getpwnam(user)
    return pw.pw_uid, pw.pw_gid


async def test_copy_to_directory_disk_full_leaves_nothing(
        testbed: Testbed, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    for i in range(6):
        (tree / f"d{i}").mkdir(parents=True)
        (tree / f"d{i}" / "f.bin").write_bytes(os.urandom(300 * 1024))
    with full_dir(testbed.user, "1m") as d:
        res = await dx.copy_to(tree, testbed.plain, f"{d}/tree", timeout=60)
        assert not res.ok, res
        left = _tree(d)
    # Directory copies are not atomic as a whole; no *file* may be truncated or temp.
    for rel in left:
        p = d / rel
        assert not rel.split("/")[-1].startswith("."), f"stray temp file {rel}"
        if rel.endswith("f.bin") and p.is_file():
            assert p.stat().st_size == 300 * 1024, f"truncated {rel}"


async def test_copy_to_permission_denied_is_clear(testbed: Testbed, tmp_path: Path) -> None:
    src = tmp_path / "small.txt"
    src.write_text("hello\n")
    with readonly_dir() as d:
        res = await dx.copy_to(src, testbed.plain, f"{d}/small.txt", timeout=60)
        assert not res.ok, res
        assert "permission denied" in res.stderr.lower(), res.stderr
        assert _tree(d) == []
    FAULTS["copy_to into read-only dir"] = f"rc={res.returncode}: {res.stderr.strip()[:90]}"


def _git_repo(root: Path, big: int) -> Path:
    return commit_tree(root / "repo", {"small.py": "print('hi')\n", "big.bin": os.urandom(big)})


async def test_ship_disk_full_leaves_nothing_under_final_name(
        testbed: Testbed, tmp_path: Path) -> None:
    repo = _git_repo(tmp_path, 3 * 1024 * 1024)
    with full_dir(testbed.user, "1m") as d:
        res = await dx.ship(testbed.plain, f"{d}/code", repo_path=repo, timeout=60)
        assert not res.ok, res
        assert res.stderr.strip()
        assert not (d / "code").exists(), f"partial ship left: {_tree(d)}"
        assert _tree(d) == [], f"stray files: {_tree(d)}"
    FAULTS["ship onto full disk"] = f"rc={res.returncode}: {res.stderr.strip()[:90]}"


async def test_ship_permission_denied_is_clear(testbed: Testbed, tmp_path: Path) -> None:
    repo = _git_repo(tmp_path, 1024)
    with readonly_dir() as d:
        res = await dx.ship(testbed.plain, f"{d}/code", repo_path=repo, timeout=60)
        assert not res.ok, res
        assert "permission denied" in res.stderr.lower(), res.stderr
        assert _tree(d) == []


def _fill(d: Path) -> None:
    """Fill the filesystem of ``d`` completely (as root), leaving no free block."""
    with (d / ".filler").open("wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
    os.sync()


async def _squeue_names(testbed: Testbed, prefix: str) -> list[str]:
    res = await dx.run(["squeue", "-h", "-u", testbed.user, "-o", "%j"], testbed.slurm,
                       timeout=60)
    assert res.ok, res
    return [n for n in res.stdout.split() if n.startswith(prefix)]


_SKELETON = {f".dispatch-{u}{sub}" for u in ("dispatcher", "dispatcher2")
             for sub in ("", "/jobs", "/payloads")}


@pytest.mark.parametrize("fault", ["disk-full", "permission-denied"])
async def test_submit_with_unwritable_share_dir_is_clean(testbed: Testbed,
                                                         fault: str) -> None:
    name = f"faults-submit-{fault}-{os.getpid()}"
    job = dx.SlurmJob(name=name, command="true", time="1", partition="cpu")
    cm = full_dir(testbed.user, "1m") if fault == "disk-full" else readonly_dir()
    with cm as d:
        if fault == "disk-full":
            _fill(d)
        before = _tree(d)
        res = await dx.submit(job, testbed.slurm, share_dir=str(d), timeout=120)
        after = _tree(d)
    assert res.job_id is None, res
    err = res.ssh_result.stderr.lower()
    assert res.ssh_result.returncode != 0 and err.strip(), res
    want = "space" if fault == "disk-full" else "permission denied"
    # the empty .dispatch/jobs skeleton may stay; nothing of this job may
    left = sorted(set(after) - set(before) - _SKELETON)
    assert not left, f"left behind: {left}"
    assert await _squeue_names(testbed, name) == [], "a job was submitted anyway"
    FAULTS[f"submit, share_dir {fault}"] = f"no job, nothing left: {err.strip()[:80]}"
    assert want in err, f"unclear error: {res.ssh_result.stderr!r}"


async def test_submit_packed_payload_onto_full_disk_is_clean(testbed: Testbed,
                                                             tmp_path: Path) -> None:
    repo = _git_repo(tmp_path, 3 * 1024 * 1024)
    name = f"faults-packed-full-{os.getpid()}"
    job = dx.SlurmJob(name=name, command="ls", time="1", partition="cpu")
    with full_dir(testbed.user, "2m") as d:
        try:
            res = await dx.submit_packed(job, testbed.slurm, repo_path=str(repo),
                                         share_dir=str(d), timeout=120)
            err, raised = res.ssh_result.stderr, False
            assert res.job_id is None, res
        except dx.SubmitError as exc:  # see the note: submit returns a result instead
            err, raised = str(exc), True
        left = sorted(set(_tree(d)) - _SKELETON)
    assert err.strip()
    assert not left, f"left behind: {left}"
    assert await _squeue_names(testbed, name) == []
    FAULTS["submit_packed, payload onto full disk"] = (
        f"no job, nothing left ({'raised SubmitError' if raised else 'result'}): "
        f"{err.strip()[-60:]}")
    assert not raised, f"submit_packed raised for a remote failure: {err}"


# ---------------------------------------------------------------------------------------
# the client process killed (SIGKILL) during an upload
# ---------------------------------------------------------------------------------------

_UPLOADER = textwrap.dedent("""
    import sys, dispatch.aio as dx, asyncio
    src, target, cfg, kh = sys.argv[1:5]
    async def main():
        async with dx.Pool(ssh_config=cfg, known_hosts=kh):
            res = await dx.copy_to(src, "relayhost", target, timeout=600)
        print("FINISHED", res.returncode, flush=True)
    asyncio.run(main())
""")


@pytest.mark.parametrize("pre_existing", [False, True])
async def test_sigkill_during_upload_never_leaves_truncated_file(
        testbed: Testbed, tmp_path: Path, relay: Relay, marker_dir: Path,
        pre_existing: bool) -> None:
    size = 64 * 1024 * 1024
    src = tmp_path / "big.bin"
    with src.open("wb") as fh:
        fh.write(os.urandom(size))
    target = marker_dir / "big.bin"
    if pre_existing:
        target.write_bytes(b"old complete content\n")
        os.chown(target, *_ids(testbed.user))
    cfg, _ = fault_pool_kwargs(testbed, tmp_path / "cfg", [Alias("relayhost", relay.port)])
    proc = subprocess.Popen([sys.executable, "-c", _UPLOADER, str(src), str(target),
                             str(cfg.config), str(cfg.known_hosts)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def temp_growing() -> bool:
            return any(p.name != "big.bin" and p.stat().st_size > 0
                       for p in marker_dir.iterdir())
        assert poll_until(temp_growing, 60, 0.002), "no temp file appeared during the upload"
        relay.freeze()  # hold the upload mid-way, then kill the client
        temps = [p for p in marker_dir.iterdir() if p.name != "big.bin"]
        assert temps and all(p.stat().st_size < size for p in temps)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    relay.close_connections(rst=True)
    relay.heal()
    # the server side notices the dead connection; give sftp-server time to exit
    assert poll_until(lambda: relay.open_connections == 0, 30)
    if pre_existing:
        assert target.read_bytes() == b"old complete content\n"
    else:
        assert not target.exists(), "final path exists after the client was killed"
    leftovers = sorted(p.name for p in marker_dir.iterdir() if p.name != "big.bin")
    FAULTS[f"client SIGKILL mid-upload (pre-existing={pre_existing})"] = (
        f"final path intact; temp files left: {leftovers}")


# ---------------------------------------------------------------------------------------
# the real sshd restarted between two calls
# ---------------------------------------------------------------------------------------


def _kill_sshd_and_its_sessions(testbed: Testbed) -> None:
    """SIGKILL the testbed's sshd listener and its whole process tree (every session's
    monitor and network process): what a crashed or rebooted sshd leaves behind."""
    master = int((testbed.state_dir / "pids" / "sshd.pid").read_text().strip())
    table = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True,
                           check=True).stdout.split()
    children: dict[int, list[int]] = {}
    for pid, ppid in zip(table[::2], table[1::2], strict=True):
        children.setdefault(int(ppid), []).append(int(pid))
    tree, todo = [], [master]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def test_sshd_restarted_between_calls_reconnects_by_itself(testbed: Testbed) -> None:
    async with dx.Pool() as pool:
        first = await dx.run("echo one", testbed.plain, timeout=30)
        assert first.ok and first.stdout == "one\n", first
        connects = pool.stats()[testbed.plain].connects
        _kill_sshd_and_its_sessions(testbed)
        # the pooled connection is dead; sshd comes back on the same port
        await asyncio.to_thread(start_testbed)
        second = await dx.run("echo two", testbed.plain, timeout=30)
        assert second.ok and second.stdout == "two\n", second
        assert not second.may_have_run
        assert pool.stats()[testbed.plain].connects == connects + 1
    FAULTS["sshd restarted between calls"] = "second call reconnected by itself"


# ---------------------------------------------------------------------------------------
# slurmctld restarted while 20 waits poll; slurmdbd stopped
# ---------------------------------------------------------------------------------------


def _slurm_up(testbed: Testbed) -> bool:
    pid_file = testbed.state_dir / "pids" / "slurmctld.pid"
    return pid_file.exists()


async def test_slurmctld_restart_while_20_waits_poll(testbed: Testbed) -> None:
    if not _slurm_up(testbed):
        pytest.fail("slurmctld is not running (scripts/testbed up)")
    jobs = []
    for i in range(20):
        code = 0 if i % 2 == 0 else 3
        job = dx.SlurmJob(name=f"faults-ctld-{i}", command=f"sleep 6; exit {code}",
                          is_slurm=True, time="5", partition="cpu")
        res = await dx.submit(job, testbed.slurm, timeout=120)
        assert res.job_id is not None, res
        jobs.append((res.job_id, "COMPLETED" if code == 0 else "FAILED"))
    waits = [asyncio.ensure_future(dx.wait(jid, testbed.slurm, poll_interval=1.0, timeout=600))
             for jid, _ in jobs]
    await asyncio.sleep(0)  # let the waits register with the poller
    with daemon_down(testbed, "slurmctld"):
        # the outage: let every wait hit at least one failing poll
        await asyncio.sleep(4)
        assert not any(w.done() for w in waits), "a wait returned while slurmctld was down"
    results = await asyncio.wait_for(asyncio.gather(*waits), 600)
    got = [(jid, r.main.state if r.main else None) for (jid, _), r in zip(jobs, results,
                                                                          strict=True)]
    want = [(jid, state) for jid, state in jobs]
    assert [g[1] for g in got] == [w[1] for w in want], got
    FAULTS["slurmctld restarted under 20 waits"] = "20/20 right final state"


async def test_slurmdbd_stopped_job_info_says_unavailable_and_wait_still_ends(
        testbed: Testbed) -> None:
    if not _slurm_up(testbed):
        pytest.fail("slurmctld is not running (scripts/testbed up)")
    job = dx.SlurmJob(name="faults-dbd", command="sleep 2", time="5", partition="cpu")
    res = await dx.submit(job, testbed.slurm, timeout=120)
    assert res.job_id is not None, res
    with daemon_down(testbed, "slurmdbd"):
        t0 = time.monotonic()
        final = await asyncio.wait_for(
            dx.wait(res.job_id, testbed.slurm, poll_interval=1.0, timeout=300), 320)
        waited = time.monotonic() - t0
        info = await dx.job_info(res.job_id, testbed.slurm, timeout=60)
    # wait must report that the job left the queue, whatever sacct can say
    assert final.main is not None, final
    assert final.main.state.split()[0] == "COMPLETED", final
    text = (info.ssh_result.stderr + info.ssh_result.stdout).lower()
    FAULTS["slurmdbd stopped"] = (f"wait ended {final.main.state} after {waited:.1f}s; "
                                  f"job_info rc={info.ssh_result.returncode}")
    assert not info.ssh_result.ok
    assert "accounting" in text and "unavailable" in text, (
        f"job_info does not say accounting is unavailable: {info.ssh_result.stderr!r}")
