"""Helpers for the testbed's realistic conditions: the slow link, the OTP host, slow logins.

Settings come from `scripts/testbed env` (the ``testbed`` fixture's ``env``); see
docs/contributing/testbed.md.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncssh

TOTP_STEP = 30  # seconds (HOTP/T30/6 in the users file)
WINDOW = 2  # pam_oath window=2: codes up to 2 steps ahead are accepted


@dataclass(frozen=True)
class Realism:
    """The realism settings `scripts/testbed env` exports."""

    wan_plain: str
    wan_slurm: str
    relay_port: int
    rtt_ms: int
    mfa: str
    mfa_port: int
    otp_secret: Path
    otp_usersfile: Path
    slowlogin: str
    slow_user: str
    slow_login_ms: int

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Realism:
        """Read them from ``env``; a missing key is a KeyError naming it (testbed too old)."""
        return cls(
            wan_plain=env["DISPATCH_TESTBED_WAN_PLAIN"],
            wan_slurm=env["DISPATCH_TESTBED_WAN_SLURM"],
            relay_port=int(env["DISPATCH_TESTBED_RELAY_PORT"]),
            rtt_ms=int(env["DISPATCH_TESTBED_RTT_MS"]),
            mfa=env["DISPATCH_TESTBED_MFA"],
            mfa_port=int(env["DISPATCH_TESTBED_MFA_PORT"]),
            otp_secret=Path(env["DISPATCH_TESTBED_OTP_SECRET"]),
            otp_usersfile=Path(env["DISPATCH_TESTBED_OTP_USERSFILE"]),
            slowlogin=env["DISPATCH_TESTBED_SLOWLOGIN"],
            slow_user=env["DISPATCH_TESTBED_SLOW_USER"],
            slow_login_ms=int(env["DISPATCH_TESTBED_SLOW_LOGIN_MS"]),
        )


def totp(secret_file: Path, at: float) -> str:
    """The 6-digit TOTP code of the secret in ``secret_file`` at epoch time ``at``."""
    secret = secret_file.read_text().strip()
    out = subprocess.run(
        ["oathtool", "--totp", "-d", "6", "-N", f"@{int(at)}", secret],
        capture_output=True, text=True, check=True, timeout=10,
    )
    return out.stdout.strip()


def _last_used_step(secret_file: Path, usersfile: Path, user: str, now_step: int) -> int | None:
    """The time step of the last code pam_oath accepted for ``user`` (None: none recently).

    pam_oath writes the last accepted code into the users file and then refuses any code
    of that step or an earlier one; the step is found by matching the code around now.
    """
    last_code = None
    for line in usersfile.read_text().splitlines():
        # TYPE USER PIN SECRET [COUNTER LAST-OTP LAST-TIME]: the last three once used
        fields = line.split()
        if len(fields) >= 6 and fields[1] == user:
            last_code = fields[5]
    if last_code is None:
        return None
    for step in range(now_step + WINDOW, now_step - WINDOW - 2, -1):
        if totp(secret_file, step * TOTP_STEP) == last_code:
            return step
    return None


async def fresh_code(secret_file: Path, usersfile: Path, user: str,
                     deadline_s: float = 100.0) -> str:
    """A code pam_oath will accept once: the earliest step inside its window not yet used.

    When every step of the window has been used (codes are good only once), polls until
    the window moves on, within ``deadline_s``.
    """
    deadline = time.monotonic() + deadline_s
    while True:
        now_step = int(time.time()) // TOTP_STEP
        last = _last_used_step(secret_file, usersfile, user, now_step)
        step = now_step if last is None else max(now_step, last + 1)
        if step <= now_step + WINDOW - 1:  # leave a step of margin at the window's far edge
            return totp(secret_file, step * TOTP_STEP)
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no unused TOTP step within {deadline_s:g}s (last used {last})")
        await asyncio.sleep(1.0)


class OtpClient(asyncssh.SSHClient):
    """Answers the first keyboard-interactive prompt with ``answer`` and gives up after that
    (None: declines keyboard-interactive altogether), so one login spends one code."""

    def __init__(self, answer: str | None) -> None:
        self.answer = answer
        self.prompts: list[str] = []

    def kbdint_auth_requested(self) -> str | None:
        return "" if self.answer is not None else None

    def kbdint_challenge_received(
        self, name: str, instructions: str, lang: str, prompts: Sequence[tuple[str, bool]]
    ) -> list[str] | None:
        if not prompts:  # PAM's closing round: nothing to answer
            return []
        if self.prompts or self.answer is None:  # asked again: the answer was refused
            return None
        self.prompts.extend(p for p, _echo in prompts)
        return [self.answer for _ in prompts]
