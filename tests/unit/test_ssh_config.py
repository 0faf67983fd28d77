"""hosts(): the pure ssh-config alias parser, Include handling, and host-string parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatch.ssh import config as sc
from dispatch.ssh import hosts
from dispatch.ssh.config import (
    HostSpec,
    host_option,
    parse_host,
    parse_host_aliases,
    read_host_aliases,
)


def test_aliases_in_file_order_without_patterns_or_duplicates() -> None:
    text = """
# comment
Host gpu1 gpu2
    HostName 10.0.0.1
Host *.example.com !bad gpu?
    User x
Host gpu2 login
Host=eq-alias
host lower
Match host foo exec "true"
    User y
Host *
    Port 22
"""
    assert parse_host_aliases(text) == ["gpu1", "gpu2", "login", "eq-alias", "lower"]


def test_negated_and_wildcards_excluded() -> None:
    assert parse_host_aliases("Host a !b c* d?e [x]\n") == ["a", "[x]"]


def test_include_order_and_depth_limit() -> None:
    files = {"a.conf": "Host inc1\nInclude b.conf\n", "b.conf": "Host inc2 top\n"}
    text = "Host top\nInclude a.conf\nHost last\n"
    got = parse_host_aliases(text, lambda p: [files[p]] if p in files else [])
    assert got == ["top", "inc1", "inc2", "last"]
    # a self-including file stops at the depth limit instead of recursing forever
    loop = parse_host_aliases("Host me\nInclude self\n", lambda p: ["Host me2\nInclude self\n"])
    assert loop == ["me", "me2"]


def test_read_host_aliases_follows_glob_includes(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "20-b.conf").write_text("Host b1\n")
    (tmp_path / "conf.d" / "10-a.conf").write_text("Host a1 a2\n")
    cfg = tmp_path / "config"
    cfg.write_text(f"Include {tmp_path}/conf.d/*.conf\nHost main\nHost *\n  User u\n")
    assert read_host_aliases(cfg) == ["a1", "a2", "b1", "main"]
    assert read_host_aliases(tmp_path / "missing") == []


def test_hosts_uses_dispatch_ssh_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "config"
    cfg.write_text("Host only-this\n")
    monkeypatch.setenv(sc.SSH_CONFIG_ENV, str(cfg))
    assert hosts() == ["only-this"]


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("gpu1", HostSpec("gpu1")),
        ("me@gpu1", HostSpec("gpu1", "me")),
        ("gpu1:2222", HostSpec("gpu1", None, 2222)),
        ("a@b@gpu1:22", HostSpec("gpu1", "a@b", 22)),
        ("[::1]:2200", HostSpec("::1", None, 2200)),
        ("fe80::1", HostSpec("fe80::1")),
    ],
)
def test_parse_host(text: str, spec: HostSpec) -> None:
    assert parse_host(text) == spec


@pytest.mark.parametrize(
    "bad",
    ["", " ", "a b", "-oProxyCommand=x", "@host", "user@", "h:70000", "h:abc", "h:", ":22",
     "u@h:0", "[::1]:x", "[::1]:99999"],
)
def test_parse_host_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid SSH host") as info:
        parse_host(bad)
    assert repr(bad) in str(info.value)  # the message names the bad value


def test_hosts_with_patterns_match_blocks_and_no_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(sc.SSH_CONFIG_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert hosts() == []  # no ~/.ssh/config: nothing, and no error
    ssh = tmp_path / ".ssh"
    (ssh / "conf.d").mkdir(parents=True)
    (ssh / "conf.d" / "b.conf").write_text("Host inc2 inc1\n")
    (ssh / "conf.d" / "a.conf").write_text("Host inc1\n")
    (ssh / "config").write_text(
        "Include conf.d/*.conf\n"
        "Host * !bastion\n    User me\n"
        'Match host gpu* exec "true"\n    Port 2222\n'
        "Host=login1 login2 !nope\n"
        "Host *.cluster gpu?\n"
        "Host bastion # the jump host\n    HostName b.example\n"
    )
    assert hosts() == ["inc1", "inc2", "login1", "login2", "bastion"]


def test_host_option_first_match_wins_like_openssh() -> None:
    text = """
Host gpu* !gpu-old
    StrictHostKeyChecking accept-new
Match host login
    StrictHostKeyChecking no
Host *
    StrictHostKeyChecking yes
"""
    opt = "StrictHostKeyChecking"
    assert host_option(text, "gpu1", opt) == "accept-new"
    assert host_option(text, "GPU2", opt) == "accept-new"  # host names match case-blind
    assert host_option(text, "gpu-old", opt) == "yes"  # negated pattern
    assert host_option(text, "login", opt) == "yes"  # Match blocks are not evaluated
    assert host_option("Host a\n  User x\n", "a", opt) is None
    included = {"inc.conf": "Host b\n  StrictHostKeyChecking=no\n"}
    top = "Include inc.conf\nHost *\n  StrictHostKeyChecking yes\n"
    assert host_option(top, "b", opt, lambda p: [included[p]]) == "no"
    assert host_option(top, "c", opt, lambda p: [included[p]]) == "yes"

