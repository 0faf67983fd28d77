"""The testbed's realistic conditions are real: the slow link delays, the OTP host wants a
one-time password, the slow login shell is slow.

Plain asyncssh on purpose (like test_testbed.py): these prove the testbed, not the library.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncssh
import pytest

from ..conftest import ROOT, Testbed
from ..support.realism import OtpClient, Realism, fresh_code, totp

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def realism(testbed: Testbed) -> Realism:
    """The realism settings; fails (never skips) when the testbed does not export them."""
    try:
        return Realism.from_env(testbed.env)
    except KeyError as exc:
        pytest.fail(f"`scripts/testbed env` lacks {exc}: run `scripts/testbed up`", pytrace=False)


async def connect(testbed: Testbed, host: str) -> asyncssh.SSHClientConnection:
    """An asyncssh connection to a testbed alias, with the testbed's client config only."""
    return await asyncssh.connect(host, config=[str(testbed.ssh_config)])


@pytest.fixture
async def wan(testbed: Testbed, realism: Realism) -> AsyncIterator[asyncssh.SSHClientConnection]:
    conn = await connect(testbed, realism.wan_plain)
    try:
        yield conn
    finally:
        conn.close()
        await conn.wait_closed()


async def echo_round_trip_ms(conn: asyncssh.SSHClientConnection, n: int) -> float:
    """Median time for one line through a remote ``cat`` and back: one network round trip."""
    proc = await conn.create_process("cat")
    try:
        times = []
        for i in range(n + 2):
            t = time.perf_counter()
            proc.stdin.write(f"ping {i}\n")
            line = await asyncio.wait_for(proc.stdout.readline(), 10)
            dt = time.perf_counter() - t
            assert line == f"ping {i}\n"
            if i >= 2:  # the first lines also pay for the session starting
                times.append(dt * 1000)
        return statistics.median(times)
    finally:
        proc.stdin.write_eof()
        proc.close()


async def median_ms(fn: Callable[[], Awaitable[object]], n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


# --- the slow link ----------------------------------------------------------------------
async def test_relay_adds_the_configured_round_trip(
    testbed: Testbed, realism: Realism, wan: asyncssh.SSHClientConnection
) -> None:
    direct = await connect(testbed, testbed.plain)
    try:
        base = await echo_round_trip_ms(direct, 15)
    finally:
        direct.close()
    slow = await echo_round_trip_ms(wan, 15)
    added = slow - base
    assert realism.rtt_ms > 0
    assert 0.75 * realism.rtt_ms <= added <= 1.25 * realism.rtt_ms, (
        f"relay added {added:.1f} ms per round trip (direct {base:.1f} ms, through it "
        f"{slow:.1f} ms); configured {realism.rtt_ms} ms"
    )


async def test_relay_keeps_order_of_a_large_stream(wan: asyncssh.SSHClientConnection) -> None:
    payload = bytes(range(256)) * 4096 * 4  # 4 MiB, many relay chunks each way
    res = await wan.run("cat", input=payload, encoding=None, check=True, timeout=60)
    assert res.stdout == payload


async def test_relay_survives_50_concurrent_connections(
    testbed: Testbed, realism: Realism
) -> None:
    pidfile = testbed.state_dir / "pids" / "wan-relay.pid"
    relay_pid = pidfile.read_text().strip()
    # At most 8 handshakes at once: sshd's MaxStartups (10:30:100) drops unauthenticated
    # connections beyond 10, which is the server's limit, not the relay's.
    gate = asyncio.Semaphore(8)

    async def one() -> asyncssh.SSHClientConnection:
        async with gate:
            return await connect(testbed, realism.wan_plain)

    conns = await asyncio.gather(*(one() for _ in range(50)))
    try:
        t = time.perf_counter()
        results = await asyncio.gather(
            *(c.run(f"echo conn-{i}", check=True, timeout=60) for i, c in enumerate(conns))
        )
        wall = time.perf_counter() - t
        assert [r.stdout for r in results] == [f"conn-{i}\n" for i in range(50)]
        assert wall < 30, f"50 concurrent commands took {wall:.1f}s through the relay"
    finally:
        for c in conns:
            c.close()
        await asyncio.gather(*(c.wait_closed() for c in conns))
    # the same relay process still serves new connections
    assert pidfile.read_text().strip() == relay_pid
    after = await connect(testbed, realism.wan_plain)
    try:
        assert (await after.run("echo after", check=True)).stdout == "after\n"
    finally:
        after.close()


async def test_wan_slurm_reaches_the_cluster(slurm_ready: Testbed, realism: Realism) -> None:
    conn = await connect(slurm_ready, realism.wan_slurm)
    try:
        res = await conn.run("sinfo -h -o %P", check=False, timeout=60)
    finally:
        conn.close()
    assert res.exit_status == 0, res.stderr
    assert slurm_ready.cpu_partition in str(res.stdout)


# --- the one-time-password host ---------------------------------------------------------
async def mfa_login(testbed: Testbed, realism: Realism,
                    client: OtpClient) -> asyncssh.SSHClientConnection:
    """Log in to the OTP host with the testbed key, ``client`` answering its prompt."""
    conn, _ = await asyncssh.create_connection(
        lambda: client, "127.0.0.1", port=realism.mfa_port, username=testbed.user,
        client_keys=[str(testbed.client_key)], known_hosts=str(testbed.known_hosts),
        config=[], connect_timeout=20,
    )
    return conn


def wrong_code(realism: Realism) -> str:
    """A 6-digit code that no step near now (inside pam_oath's window) accepts."""
    now = time.time()
    near = {totp(realism.otp_secret, now + k * 30) for k in range(-3, 4)}
    return next(c for c in ("000000", "111111", "222222") if c not in near)


async def test_mfa_refuses_a_login_without_the_code(testbed: Testbed, realism: Realism) -> None:
    # the key alone is not enough
    with pytest.raises(asyncssh.PermissionDenied):
        await mfa_login(testbed, realism, OtpClient(None))
    # nor is the key with a wrong code; the prompt is pam_oath's
    client = OtpClient(wrong_code(realism))
    with pytest.raises(asyncssh.PermissionDenied):
        await mfa_login(testbed, realism, client)
    assert client.prompts and "One-time password (OATH)" in client.prompts[0]


async def test_mfa_accepts_the_key_with_a_current_code(testbed: Testbed, realism: Realism) -> None:
    # a code is good once: take the first step of the window nobody has used yet
    code = await fresh_code(realism.otp_secret, realism.otp_usersfile, testbed.user)
    t = time.perf_counter()
    client = OtpClient(code)
    conn = await mfa_login(testbed, realism, client)
    login_s = time.perf_counter() - t
    try:
        res = await conn.run("whoami", check=True, timeout=30)
    finally:
        conn.close()
    assert res.stdout == f"{testbed.user}\n"
    assert client.prompts == [f"One-time password (OATH) for `{testbed.user}': "]
    assert login_s < 5, f"OTP login took {login_s:.1f}s"


def test_otp_command_prints_the_current_code(realism: Realism) -> None:
    before = time.time()
    out = subprocess.run([str(ROOT / "scripts" / "testbed"), "otp"], capture_output=True,
                         text=True, check=True, timeout=30).stdout.strip()
    after = time.time()
    assert out in {totp(realism.otp_secret, before), totp(realism.otp_secret, after)}


# --- the slow login shell ---------------------------------------------------------------
async def test_slowlogin_login_shell_costs_what_it_says(
    slurm_ready: Testbed, realism: Realism
) -> None:
    conn = await connect(slurm_ready, realism.slowlogin)
    try:
        assert (await conn.run("whoami", check=True)).stdout == f"{realism.slow_user}\n"

        async def login() -> None:
            await conn.run('exec "$SHELL" -l -c true', check=True, timeout=30)

        async def plain() -> None:
            await conn.run('exec "$SHELL" -c true', check=True, timeout=30)

        login_ms = await median_ms(login, 5)
        plain_ms = await median_ms(plain, 5)
        # the user can use SLURM like the `slurm` alias (SLURM_CONF from the sshd)
        sq = await conn.run('exec "$SHELL" -l -c "squeue -h -u $USER"', check=False, timeout=60)
    finally:
        conn.close()
    want = realism.slow_login_ms
    cost = login_ms - plain_ms
    assert 0.75 * want <= cost <= 1.25 * want, (
        f"login shell cost {cost:.0f} ms over a non-login one ({login_ms:.0f} vs "
        f"{plain_ms:.0f} ms); configured {want} ms"
    )
    assert plain_ms < want / 3, f"a non-login shell took {plain_ms:.0f} ms"
    assert sq.exit_status == 0, sq.stderr
