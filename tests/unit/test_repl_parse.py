"""Parsing Jupyter's startup log, ss output and getent output (captures from the real tools)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatch.jupyter.parse import (
    jupyter_failure,
    log_tail,
    parse_getent_hosts,
    parse_jpserver_pid,
    parse_jupyter_log,
    parse_jupyter_url,
    parse_listener_pids,
    parse_node_address,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "repl"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


@pytest.mark.parametrize(
    ("name", "port", "token", "path", "first_host", "pid"),
    [
        (
            "server_ip127_port0.log", 40765,
            "b81fe1aef2f27ef258e8238e80d900885b02f8ab7008bb0a", "/", "127.0.0.1", 11126,
        ),
        (
            "server_ip0_8890.log", 8890,
            "3f6640fca0309fd30f846620aa88970479ea4c1807873549", "/", "0.0.0.0", 11128,
        ),
        (
            "lab_ip0_8888.log", 8888,
            "9089f3af06232b3793af58bbad2556effd68a01315ce073a", "/lab", "0.0.0.0", 15230,
        ),
        # The token was set by us (config/JUPYTER_TOKEN): Jupyter masks it as "token=...".
        ("server_port_retry_token_set.log", 8891, None, "/", "127.0.0.1", None),
    ],
)
def test_parse_started_server(
    name: str, port: int, token: str | None, path: str, first_host: str, pid: int | None
) -> None:
    text = fixture(name)
    started = parse_jupyter_log(text)
    assert started is not None
    assert started.port == port
    assert started.token == token
    assert started.path == path
    assert started.scheme == "http"
    assert started.urls[0].host == first_host
    assert all(u.port == port for u in started.urls)
    assert parse_jpserver_pid(text) == pid
    assert jupyter_failure(text) is None


def test_lab_log_lists_every_address_once_per_print() -> None:
    started = parse_jupyter_log(fixture("lab_ip0_8888.log"))
    assert started is not None
    # running-at block (0.0.0.0, 127.0.0.1) then copy-and-paste block (vm, 127.0.0.1)
    assert [u.host for u in started.urls] == ["0.0.0.0", "127.0.0.1", "vm", "127.0.0.1"]
    assert started.urls[0].is_wildcard and started.urls[1].is_loopback
    # the file:// line and the language-server line are not URLs of the server
    assert all(u.url.startswith("http://") for u in started.urls)


def test_url_for_rewrites_host_port_and_token() -> None:
    started = parse_jupyter_log(fixture("lab_ip0_8888.log"))
    assert started is not None
    assert started.url_for("node3") == (
        "http://node3:8888/lab?token=9089f3af06232b3793af58bbad2556effd68a01315ce073a"
    )
    assert started.url_for("localhost", 9999, "t0k") == "http://localhost:9999/lab?token=t0k"
    assert started.url_for("::1", 9999, "t") == "http://[::1]:9999/lab?token=t"


@pytest.mark.parametrize("cut", [0, 4, 5])
def test_partial_log_is_not_started(cut: int) -> None:
    # Lines before "is running at:" and the header line alone do not count as started.
    lines = fixture("server_ip127_port0.log").splitlines(keepends=True)
    assert parse_jupyter_log("".join(lines[:cut])) is None


def test_half_written_url_line_is_not_read() -> None:
    lines = fixture("server_ip127_port0.log").splitlines(keepends=True)
    url_line = lines[5]
    assert parse_jupyter_log("".join(lines[:5]) + url_line[:60]) is None
    started = parse_jupyter_log("".join(lines[:6]))
    assert started is not None and started.port == 40765


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("server_port_busy.log", "could not be started because port 8890 is not available"),
        ("server_bad_option.log", "argument --notanoption: expected one argument"),
    ],
)
def test_failures(name: str, expected: str) -> None:
    text = fixture(name)
    assert parse_jupyter_log(text) is None
    failure = jupyter_failure(text)
    assert failure is not None and expected in failure


def test_failure_from_launcher() -> None:
    text = "bash: line 3: jupyter: command not found\nModuleNotFoundError: No module named 'x'\n"
    assert jupyter_failure(text) == "ModuleNotFoundError: No module named 'x'"


def test_unrelated_urls_are_ignored() -> None:
    text = (
        "Downloading https://files.pythonhosted.org:443/packages/x.whl\n"
        "[I 2026-11-26 12:00:00.000 ServerApp] see http://example.org:80/doc for help\n"
    )
    assert parse_jupyter_log(text) is None


@pytest.mark.parametrize(
    ("text", "host", "port", "path", "token"),
    [
        ("http://hostname:8890/lab?token=abc", "hostname", 8890, "/lab", "abc"),
        ("  http://127.0.0.1:8888/lab?token=abc&x=1", "127.0.0.1", 8888, "/lab", "abc"),
        ("http://[::1]:8888/", "::1", 8888, "/", None),
        ("https://node-1.cluster:443/tree?token=...", "node-1.cluster", 443, "/tree", None),
        ("http://h:8888", "h", 8888, "/", None),
    ],
)
def test_parse_url(text: str, host: str, port: int, path: str, token: str | None) -> None:
    url = parse_jupyter_url(text)
    assert url is not None
    assert (url.host, url.port, url.path, url.token) == (host, port, path, token)


@pytest.mark.parametrize("text", ["no url", "http://host/", "http://host:99999/", "file:///x"])
def test_parse_url_rejects(text: str) -> None:
    assert parse_jupyter_url(text) is None


def test_listener_pids_from_ss() -> None:
    text = fixture("ss_ltnp_lab.txt")
    assert parse_listener_pids(text, 8888) == [15230]
    assert parse_listener_pids(text, 33809) == [15521, 15518]
    assert parse_listener_pids(text, 2024) == []  # another user's socket: no pid shown
    assert parse_listener_pids(text, 1) == []
    with_netid = "tcp   LISTEN 0 128 [::]:8888 [::]:* users:((\"jupyter-lab\",pid=7,fd=6))\n"
    assert parse_listener_pids(with_netid, 8888) == [7]


def test_getent_and_tail() -> None:
    assert parse_getent_hosts("127.0.0.1       localhost\n") == "127.0.0.1"
    assert parse_getent_hosts("") is None
    text = "\n".join(f"line {i}" for i in range(100)) + "\n"
    assert log_tail(text, 3) == "line 97\nline 98\nline 99"
    assert len(log_tail("x" * 10000, 3, max_chars=50)) == 50


def test_node_address_from_scontrol() -> None:
    text = fixture("scontrol_show_node.txt")
    first = text.splitlines()[0]
    assert parse_node_address(first) == "127.0.0.1"  # NodeAddr first
    assert parse_node_address(first.replace("NodeAddr=127.0.0.1", "NodeAddr=(null)")) == (
        "localhost"
    )
    assert parse_node_address("Node nosuchnode not found\n") is None
