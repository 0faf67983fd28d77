"""The command line's pure parts: argument parsing, HOST:path, --env, tables, JSON, progress."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dispatch.cli.console import one_line
from dispatch.cli.main import main
from dispatch.cli.parser import parse_args
from dispatch.cli.progress import ProgressBar, Spinner
from dispatch.cli.render import (
    RemoteSpec,
    format_bytes,
    format_table,
    parse_env,
    parse_remote,
    prefix_lines,
    to_json,
    to_jsonable,
)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("plain:/tmp/x", RemoteSpec("plain", "/tmp/x")),
        ("plain:rel/dir", RemoteSpec("plain", "rel/dir")),
        ("user@host:x", RemoteSpec("user@host", "x")),
        ("plain:", RemoteSpec("plain", ".")),
        ("local.txt", RemoteSpec(None, "local.txt")),
        ("./a:b", RemoteSpec(None, "./a:b")),
        ("/tmp/x:y", RemoteSpec(None, "/tmp/x:y")),
        (":x", RemoteSpec(None, ":x")),
    ],
)
def test_parse_remote(spec: str, expected: RemoteSpec) -> None:
    assert parse_remote(spec) == expected


def test_parse_env() -> None:
    assert parse_env(["A=1", "B_2=x=y", "C="]) == {"A": "1", "B_2": "x=y", "C": ""}
    with pytest.raises(ValueError, match="'novalue'"):
        parse_env(["novalue"])
    with pytest.raises(ValueError, match="'1A'"):
        parse_env(["1A=x"])
    with pytest.raises(ValueError, match="'A-B'"):
        parse_env(["A-B=x"])


def test_format_table_aligns_and_right_aligns_numbers() -> None:
    text = format_table(("NAME", "N"), [("a", 1), ("long-name", 100)])
    assert text.splitlines() == ["NAME         N", "a            1", "long-name  100"]


def test_format_table_empty_and_none() -> None:
    assert format_table(("A", "B"), []) == "A  B"
    assert format_table(("A", "B"), [(None, "x")]).splitlines()[1] == "   x"


def test_prefix_lines() -> None:
    assert prefix_lines("h: ", "a\nb\n") == "h: a\nh: b\n"
    assert prefix_lines("h: ", "") == ""


@dataclass(frozen=True)
class _Inner:
    path: Path
    pair: tuple[str, int]


@dataclass(frozen=True)
class _Outer:
    inner: _Inner
    items: list[_Inner] = field(default_factory=list)
    mapping: dict[str, int] = field(default_factory=dict)


def test_to_jsonable_nested_dataclasses() -> None:
    value = _Outer(_Inner(Path("/x"), ("a", 1)), [_Inner(Path("y"), ("b", 2))], {"k": 3})
    assert to_jsonable(value) == {
        "inner": {"path": "/x", "pair": ["a", 1]},
        "items": [{"path": "y", "pair": ["b", 2]}],
        "mapping": {"k": 3},
    }
    assert json.loads(to_json(value))["mapping"] == {"k": 3}


def test_format_bytes() -> None:
    assert format_bytes(12) == "12 B"
    assert format_bytes(2048) == "2.0 KiB"
    assert format_bytes(5 * 1024**3) == "5.0 GiB"


def test_run_takes_command_after_double_dash() -> None:
    args = parse_args(["run", "plain", "--", "ls", "-la", "--", "x"])
    assert (args.host, args.command) == ("plain", ["ls", "-la", "--", "x"])
    assert not args.json


def test_run_without_double_dash() -> None:
    assert parse_args(["run", "plain", "hostname"]).command == ["hostname"]


def test_global_flags_before_or_after_subcommand() -> None:
    a = parse_args(["--json", "--ssh-config", "/c", "queue", "slurm"])
    b = parse_args(["queue", "slurm", "--json", "--ssh-config", "/c"])
    for args in (a, b):
        assert args.json and args.ssh_config == "/c" and args.host == "slurm"
    assert parse_args(["-vv", "hosts"]).verbose == 2
    assert parse_args(["hosts", "-v"]).verbose == 1


def test_run_many_requires_double_dash(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse_args(["run-many", "a", "b", "--", "uptime"])
    assert args.hosts == ["a", "b"] and args.command == ["uptime"]
    with pytest.raises(SystemExit) as exc:
        parse_args(["run-many", "a", "b"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "dispatch: error: run-many: put the command after `--`" in err


def test_submit_options() -> None:
    args = parse_args([
        "submit", "slurm", "--command", "python train.py", "--name", "t", "-p", "gpu",
        "--nodes", "2", "--gpus", "4", "--gpu-type", "h100", "--time", "10:00",
        "--env", "A=1", "--env", "B=2", "--dependency", "afterok:5", "--packed",
        "--repo", ".", "--dirty", "--wait", "--poll", "2",
    ])  # fmt: skip
    assert args.command == "python train.py" and args.partition == "gpu"
    assert (args.nodes, args.gpus, args.gpu_type, args.time) == (2, 4, "h100", "10:00")
    assert args.env == ["A=1", "B=2"] and args.dependency == "afterok:5"
    assert args.packed and args.dirty and args.wait and args.poll == 2.0


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "slurm", "abc"],
        ["wait", "slurm", "12", "--poll", "0"],
        ["wait", "slurm", "12", "--timeout", "soon"],
        ["submit", "slurm"],
        ["gpus", "slurm"],
        ["solve", "c.yaml", "--chips", "-1"],
        ["frobnicate"],
        ["queue", "slurm", "--", "x"],
    ],
)
def test_usage_errors_exit_2_with_one_error_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("dispatch: error:")]
    assert "Traceback" not in err
    # one short usage line and one error line, nothing else
    usage, error = err.splitlines()
    assert usage.startswith("usage: dispatch") and error.startswith("dispatch: error: ")


def test_usage_is_one_short_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["status", "slurm", "abc"])
    assert capsys.readouterr().err == (
        "usage: dispatch status [options] HOST JOB\n"
        "dispatch: error: argument JOB: expected a SLURM job id like 123 or 123_4, got 'abc'\n"
    )


def test_unknown_command_is_named_without_the_whole_list(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        parse_args(["frobnicate", "x"])
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == "dispatch: error: unknown command 'frobnicate' (see `dispatch --help`)"


def test_usage_error_with_json_is_a_json_object_on_stdout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(["--json", "wait", "slurm", "12", "--poll", "0"])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["exit_code"] == 2 and "--poll" in data["error"]
    assert captured.err.splitlines()[-1] == f"dispatch: error: {data['error']}"


def test_errors_with_json_are_json_objects(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--json", "copy", "a", "b"]) == 1
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data == {"error": data["error"], "exit_code": 1}
    assert data["error"].startswith("copy: neither SRC nor DST is remote")
    assert captured.err == f"dispatch: error: {data['error']}\n"


def test_partitions_command_parses() -> None:
    args = parse_args(["partitions", "slurm", "--timeout", "5", "--json"])
    assert (args.handler, args.host, args.timeout, args.json) == ("partitions", "slurm", 5.0, True)


def test_wait_options() -> None:
    args = parse_args(["wait", "slurm", "42", "--poll", "0.5", "--timeout", "60"])
    assert (args.job, args.poll, args.wait_timeout) == (42, 0.5, 60.0)


def test_missing_ssh_config_is_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--ssh-config", "/nonexistent/ssh_config", "hosts"]) == 2
    err = capsys.readouterr().err
    assert err == "dispatch: error: --ssh-config: no such file: /nonexistent/ssh_config\n"


def test_copy_needs_exactly_one_remote_side(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["copy", "a", "b"]) == 1
    assert main(["copy", "h1:a", "h2:b"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("dispatch: error: copy:") for line in err)


def test_submit_env_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", "slurm", "--command", "true", "--env", "oops"]) == 2
    assert "--env expects KEY=VALUE, got 'oops'" in capsys.readouterr().err


class _FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_draws_only_on_a_terminal() -> None:
    piped = io.StringIO()
    bar = ProgressBar(piped, "up")
    bar(50, 100)
    bar(100, 100)
    bar.close()
    assert piped.getvalue() == ""

    tty = _FakeTTY()
    bar = ProgressBar(tty, "up")
    bar(100, 100)
    bar.close()
    out = tty.getvalue()
    assert "up [" in out and "100%" in out and out.endswith("\n")


def test_spinner_silent_when_piped() -> None:
    piped = io.StringIO()
    with Spinner(piped, "waiting"):
        pass
    assert piped.getvalue() == ""
    tty = _FakeTTY()
    with Spinner(tty, "waiting", interval=0.01):
        pass
    assert "waiting (elapsed 0m 00s)" in tty.getvalue()


def test_run_without_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "somehost"]) == 2
    assert capsys.readouterr().err == (
        "dispatch: error: run: no command given (put it after `--`)\n"
    )


def test_run_without_host_names_only_host(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(["run"])
    assert exc.value.code == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("dispatch:")]
    assert errors == ["dispatch: error: the following arguments are required: HOST"]


def test_multiline_error_messages_become_one_line() -> None:
    text = "cannot place 4x h100; every host was rejected:\n  a: no\n  b: busy\n"
    assert one_line(text) == "cannot place 4x h100; every host was rejected: a: no; b: busy"
