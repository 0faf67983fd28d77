"""Who answers a keyboard-interactive second factor: OpenSSH's askpass rules, messages."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import pytest

from dispatch.ssh import auth
from dispatch.ssh.auth import (
    Answerer,
    CannotAnswer,
    LoginClient,
    LoginState,
    default_answer_route,
    failure_message,
)

ENV = ("SSH_ASKPASS", "SSH_ASKPASS_REQUIRE", "DISPLAY", "WAYLAND_DISPLAY")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def route(env: pytest.MonkeyPatch, *, tty: bool, **values: str) -> tuple[str | None, str]:
    env.setattr(auth, "_can_open_tty", lambda: tty)
    for name, value in values.items():
        env.setenv(name, value)
    return default_answer_route()


# (terminal?, environment) -> how ssh's read_passphrase would ask
@pytest.mark.parametrize(
    ("tty", "values", "expected"),
    [
        (True, {}, "tty"),
        (True, {"SSH_ASKPASS": "/bin/ap", "DISPLAY": ":0"}, "tty"),  # unset: terminal first
        (False, {"SSH_ASKPASS": "/bin/ap", "DISPLAY": ":0"}, "askpass"),
        (False, {"SSH_ASKPASS": "/bin/ap", "WAYLAND_DISPLAY": "w"}, "askpass"),
        (False, {"SSH_ASKPASS": "/bin/ap"}, None),  # no display: ssh does not run it
        (False, {"SSH_ASKPASS": "/bin/ap", "SSH_ASKPASS_REQUIRE": "force"}, "askpass"),
        (True, {"SSH_ASKPASS": "/bin/ap", "SSH_ASKPASS_REQUIRE": "force"}, "askpass"),
        (True, {"SSH_ASKPASS": "/bin/ap", "SSH_ASKPASS_REQUIRE": "prefer", "DISPLAY": ":0"},
         "askpass"),
        (True, {"SSH_ASKPASS": "/bin/ap", "SSH_ASKPASS_REQUIRE": "prefer"}, "tty"),
        (True, {"SSH_ASKPASS": "/bin/ap", "SSH_ASKPASS_REQUIRE": "never", "DISPLAY": ":0"},
         "tty"),
        (False, {"SSH_ASKPASS": "/bin/ap", "SSH_ASKPASS_REQUIRE": "never", "DISPLAY": ":0"},
         None),
        (False, {}, None),
    ],
)
def test_askpass_is_used_exactly_when_ssh_would(
    env: pytest.MonkeyPatch, tty: bool, values: dict[str, str], expected: str | None
) -> None:
    how, where = route(env, tty=tty, **values)
    assert how == expected, where
    if how == "askpass":
        assert where == "/bin/ap"


def test_why_nobody_can_answer_is_specific(env: pytest.MonkeyPatch) -> None:
    assert route(env, tty=False)[1] == "no terminal and SSH_ASKPASS is not set"
    assert "needs DISPLAY or SSH_ASKPASS_REQUIRE=force" in route(
        env, tty=False, SSH_ASKPASS="/bin/ap")[1]
    assert "SSH_ASKPASS_REQUIRE=never" in route(
        env, tty=False, SSH_ASKPASS_REQUIRE="never", DISPLAY=":0")[1]


async def _never(
    host: str, name: str, instructions: str, prompts: Sequence[tuple[str, bool]]
) -> Sequence[str] | None:
    return None


def test_batch_mode_silences_only_the_default_answerer(env: pytest.MonkeyPatch) -> None:
    env.setattr(auth, "_can_open_tty", lambda: True)
    assert Answerer(auth.default_kbdint_handler, 10).why_not() is None
    assert "BatchMode yes" in str(
        Answerer(auth.default_kbdint_handler, 10, batch_mode=True).why_not())
    assert Answerer(_never, 10, batch_mode=True).why_not() is None  # code asked explicitly
    assert "Pool(kbdint=None)" in str(Answerer(None, 10).why_not())


async def test_askpass_program_gets_the_prompt_and_answers(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen = tmp_path / "argv"
    program = tmp_path / "askpass"
    program.write_text(f'#!/bin/sh\nprintf "%s" "$1" > {seen}\nprintf "123456\\r\\nrest"\n')
    program.chmod(0o700)
    env.setattr(auth, "_can_open_tty", lambda: False)
    env.setenv("SSH_ASKPASS", str(program))
    env.setenv("SSH_ASKPASS_REQUIRE", "force")
    answers = await auth.default_kbdint_handler("me@h", "", "", [("Code: ", False)])
    assert answers == ["123456"]  # up to the first line end, as ssh reads it
    assert seen.read_text() == "(me@h) Code: "


async def test_a_failing_askpass_means_no_answer(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    program = tmp_path / "askpass"
    program.write_text("#!/bin/sh\necho 123456\nexit 1\n")  # cancelled dialog
    program.chmod(0o700)
    env.setattr(auth, "_can_open_tty", lambda: False)
    env.setenv("SSH_ASKPASS", str(program))
    env.setenv("SSH_ASKPASS_REQUIRE", "force")
    assert await auth.default_kbdint_handler("h", "", "", [("Code: ", False)]) is None


def test_messages_tell_what_happened() -> None:
    assert failure_message("h", "u", LoginState()) is None  # keyboard-interactive no part
    no_key = failure_message("h", "u", LoginState(kbdint_offered=True))
    assert no_key is not None and "no usable key was accepted" in no_key
    nobody = failure_message("h", "u", LoginState(
        kbdint_offered=True, key_accepted=True, no_answer="no terminal"))
    assert nobody is not None and nobody.startswith("ssh: u@h: the server accepted the key")
    assert "(no terminal)" in nobody and "Pool(kbdint=...)" in nobody
    refused = failure_message("a@h", "u", LoginState(
        kbdint_offered=True, key_accepted=True, answered=True, prompts=["Code: "]))
    assert refused is not None and refused.startswith("ssh: a@h: Permission denied")
    assert 'refused the one-time password (keyboard-interactive ("Code:"))' in refused
    assert "not retried" in refused


async def test_the_default_answerer_says_why_it_cannot_answer(env: pytest.MonkeyPatch) -> None:
    env.setattr(auth, "_can_open_tty", lambda: False)
    with pytest.raises(CannotAnswer) as info:
        await auth.default_kbdint_handler("h", "", "", [("Code: ", False)])
    assert info.value.reason == "no terminal and SSH_ASKPASS is not set"
    assert str(info.value) == info.value.reason


def test_cannot_answer_survives_pickling_with_its_reason() -> None:
    # the agent sends exceptions over its socket pickled
    again = pickle.loads(pickle.dumps(CannotAnswer("no badge reader")))
    assert isinstance(again, CannotAnswer) and again.reason == "no badge reader"


def _client(handler: auth.KbdintHandler) -> tuple[LoginClient, LoginState, list[float | None]]:
    state = LoginState(kbdint_offered=True, key_accepted=True, attempts=1)
    clock: list[float | None] = []
    return LoginClient("a@h", Answerer(handler, 5.0), state, clock.append), state, clock


async def test_a_handler_raising_cannot_answer_reads_like_nobody_can_answer() -> None:
    async def no_reader(
        host: str, name: str, instructions: str, prompts: Sequence[tuple[str, bool]]
    ) -> Sequence[str] | None:
        raise CannotAnswer("no badge reader attached")

    client, state, clock = _client(no_reader)
    got = await client.kbdint_challenge_received("", "", "", [("Code: ", False)])
    assert got is None and not state.answered
    assert clock == [5.0, None]  # the connect clock waited for the answer, then resumed
    msg = failure_message("a@h", "u", state)
    assert msg is not None and msg.startswith(
        'ssh: a@h: the server accepted the key and asked for a one-time password '
        '(keyboard-interactive ("Code:")), but nothing here can answer it '
        '(no badge reader attached). Provide one:'
    ), msg


async def test_a_handler_returning_none_or_raising_otherwise_is_reported_as_such() -> None:
    client, state, _ = _client(_never)
    assert await client.kbdint_challenge_received("", "", "", [("Code: ", False)]) is None
    msg = failure_message("a@h", "u", state)
    assert msg is not None and "not answered (the kbdint handler gave no answer)" in msg

    async def broken(
        host: str, name: str, instructions: str, prompts: Sequence[tuple[str, bool]]
    ) -> Sequence[str] | None:
        raise KeyError("oops")

    client, state, _ = _client(broken)
    assert await client.kbdint_challenge_received("", "", "", [("Code: ", False)]) is None
    msg = failure_message("a@h", "u", state)
    assert msg is not None and "the kbdint handler raised KeyError" in msg
