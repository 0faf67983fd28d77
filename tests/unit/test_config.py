"""load_dispatch_config / parse_dispatch_config / RemoteInventory: parsing and located errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dispatch.config import (
    ClusterConfig,
    DispatchConfig,
    PartitionConfig,
    PlainHostConfig,
    RemoteInventory,
    SlurmHostConfig,
    load_dispatch_config,
    parse_dispatch_config,
)
from dispatch.errors import ConfigError, InvalidValueError
from dispatch.hardware import SUPPORTED_CHIPS

ROOT = Path(__file__).resolve().parent.parent.parent

GOOD = """
clusters:
  lab: {root: /r, work: /w}
  hpc: {root: /h, work: /s, log: /l}
hosts:
  box:
    ssh: box
    cluster: lab
    chips: {h100: 2, a6000: 1}
  box2: {ssh: box2, cluster: lab, type: plain, chips: {h100: 4}}
  login:
    type: slurm
    ssh: hpc
    cluster: hpc
    partitions: [debug, {name: gpu, default: true, constraint: h100}]
    cpu_partitions: [cpu]
    chips: {h100: 8}
priority: [login]
gres_mapping: {h100: h100}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dispatch.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_parse_good_config(tmp_path: Path) -> None:
    cfg = load_dispatch_config(write(tmp_path, GOOD))
    assert cfg.clusters["lab"] == ClusterConfig("/r", "/w")
    box = cfg.hosts["box"]
    assert isinstance(box, PlainHostConfig) and box.chips == {"h100": 2, "a6000": 1}
    login = cfg.hosts["login"]
    assert isinstance(login, SlurmHostConfig)
    assert login.partitions == [PartitionConfig("debug"),
                                PartitionConfig("gpu", default=True, constraint="h100")]
    assert login.cpu_partitions == ["cpu"] and login.chips == {"h100": 8}
    assert cfg.priority == ["login"] and cfg.gres_mapping == {"h100": "h100"}
    assert cfg.ordered_hosts() == ["login", "box", "box2"]


def test_env_interpolation_keeps_secrets_out(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_JFS_URL", "redis://u:pw@r:6379/1")
    monkeypatch.setenv("TEST_WORK", "/scratch/me")
    path = write(tmp_path, """
        mount: ${oc.env:TEST_JFS_URL}
        clusters: {c: {root: /r, work: "${oc.env:TEST_WORK}/w"}}
        hosts: {h: {ssh: h, cluster: c}}
    """)
    cfg = load_dispatch_config(path)
    assert cfg.mount == "redis://u:pw@r:6379/1"
    assert cfg.clusters["c"].work == "/scratch/me/w"
    assert "pw" not in repr(cfg)


def test_parse_from_omegaconf_object() -> None:
    cfg = parse_dispatch_config(OmegaConf.create(textwrap.dedent(GOOD)))
    assert set(cfg.hosts) == {"box", "box2", "login"}
    assert parse_dispatch_config({"clusters": {}, "hosts": {}}) == DispatchConfig()


@pytest.mark.parametrize(
    ("text", "where", "value"),
    [
        # a host that references an undefined cluster
        ("clusters: {a: {root: /r, work: /w}}\nhosts: {h: {ssh: h, cluster: nope}}",
         "hosts.h.cluster", "'nope'"),
        # an unknown type
        ("clusters: {a: {root: /r, work: /w}}\nhosts: {h: {ssh: h, cluster: a, type: k8s}}",
         "hosts.h.type", "'k8s'"),
        # a missing ssh
        ("clusters: {a: {root: /r, work: /w}}\nhosts: {h: {cluster: a}}",
         "hosts.h.ssh", "is required"),
        # a chip name not in SUPPORTED_CHIPS
        ("clusters: {a: {root: /r, work: /w}}\nhosts: {h: {ssh: h, cluster: a, chips: {v100: 1}}}",
         "hosts.h.chips.v100", "'v100'"),
        # a negative chip count
        ("clusters: {a: {root: /r, work: /w}}\nhosts: {h: {ssh: h, cluster: a, chips: {h100: -2}}}",
         "hosts.h.chips.h100", "-2"),
        # ... also on a SLURM host's limits
        ("clusters: {a: {root: /r, work: /w}}\n"
         "hosts: {h: {ssh: h, cluster: a, type: slurm, chips: {h100: -1}}}",
         "hosts.h.chips.h100", "-1"),
        # a priority entry naming no host
        ("clusters: {a: {root: /r, work: /w}}\nhosts: {h: {ssh: h, cluster: a}}\n"
         "priority: [h, ghost]", "priority[1]", "'ghost'"),
        # non-mappings where mappings belong
        ("clusters: [a, b]", "clusters", "['a', 'b']"),
        ("clusters: {a: {root: /r, work: /w}}\nhosts: {h: just-a-string}",
         "hosts.h", "'just-a-string'"),
        ("clusters: {a: /r}", "clusters.a", "'/r'"),
        ("clusters: {a: {root: /r, work: /w}}\nhosts: {h: {ssh: h, cluster: a, chips: [h100]}}",
         "hosts.h.chips", "['h100']"),
        ("gres_mapping: [h100]", "gres_mapping", "['h100']"),
        # other mistakes
        ("clusters: {a: {root: /r}}", "clusters.a.work", "is required"),
        ("clusters: {a: {root: /r, work: /w, wrok: /x}}", "clusters.a.wrok", "unknown key"),
        ("gres_mapping: {v100: v100}", "gres_mapping.v100", "'v100'"),
        ("clusters: {a: {root: /r, work: /w}}\n"
         "hosts: {h: {ssh: h, cluster: a, type: slurm, partitions: [{default: true}]}}",
         "hosts.h.partitions[0].name", "is required"),
        ("clusters: {a: {root: /r, work: /w}}\n"
         "hosts: {h: {ssh: h, cluster: a, type: slurm, partitions: gpu}}",
         "hosts.h.partitions", "'gpu'"),
        ("clusters: {a: {root: /r, work: /w}}\n"
         "hosts: {h: {ssh: h, cluster: a, chips: {h100: two}}}",
         "hosts.h.chips.h100", "'two'"),
        ("priority: h", "priority", "'h'"),
        ("hostz: {}", "<root>.hostz", "unknown key"),
    ],
)
def test_errors_name_file_key_and_value(tmp_path: Path, text: str, where: str,
                                        value: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_dispatch_config(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: "), msg
    assert where in msg, msg
    assert value in msg, msg


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_dispatch_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("hosts: {h: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        load_dispatch_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_dispatch_config(lst)


def test_unresolvable_interpolation_is_located(tmp_path: Path) -> None:
    path = write(tmp_path, "mount: ${oc.env:DISPATCH_SURELY_UNSET_VAR_XYZ}\n")
    with pytest.raises(ConfigError, match="DISPATCH_SURELY_UNSET_VAR_XYZ"):
        load_dispatch_config(path)


def test_dataclasses_validate_directly() -> None:
    with pytest.raises(ConfigError, match="undefined cluster"):
        DispatchConfig(hosts={"h": PlainHostConfig("h", "c")})
    with pytest.raises(ConfigError, match="more than one default"):
        SlurmHostConfig("s", "c", partitions=[PartitionConfig("a", True),
                                              PartitionConfig("b", True)])
    with pytest.raises(ConfigError, match="duplicate"):
        SlurmHostConfig("s", "c", partitions=["a", "a"])  # type: ignore[list-item]
    # names are accepted as partitions
    s = SlurmHostConfig("s", "c", partitions=["a"])  # type: ignore[list-item]
    assert s.partitions == [PartitionConfig("a")]
    with pytest.raises(ConfigError, match="must be 'plain'"):
        PlainHostConfig("h", "c", type="slurm")  # type: ignore[arg-type]
    # mutable defaults are not shared
    a, b = PlainHostConfig("a", "c"), PlainHostConfig("b", "c")
    assert a.chips is not b.chips and a.uv_groups is not b.uv_groups


def test_inventory(tmp_path: Path) -> None:
    inv = RemoteInventory(load_dispatch_config(write(tmp_path, GOOD)))
    lab = inv.get_cluster("lab")
    assert lab.log == "/w/logs" and inv.get_cluster("lab") is lab
    assert inv.get_cluster("hpc").log == "/l"
    with pytest.raises(InvalidValueError, match="'nope'"):
        inv.get_cluster("nope")
    assert isinstance(inv.get_host("login"), SlurmHostConfig)
    with pytest.raises(InvalidValueError, match="'ghost'"):
        inv.get_host("ghost")
    assert inv.get_chip("h100") is SUPPORTED_CHIPS["h100"]
    assert inv.plain_hosts() == ["box", "box2"]
    assert inv.slurm_hosts() == ["login"]
    assert inv.hosts_with_chip("h100") == ["box", "box2"]
    assert inv.hosts_with_chip(SUPPORTED_CHIPS["a6000"]) == ["box"]
    assert inv.hosts_with_chip("l40") == []
    assert inv.total_chips("h100") == 6
    assert inv.default_partition("login") == PartitionConfig("gpu", True, "h100")
    assert inv.default_partition("box") is None
    machine = inv.get_machine("login")
    assert machine.is_slurm and machine.cluster.name == "hpc"


def test_default_partition_falls_back_to_first() -> None:
    cfg = DispatchConfig(clusters={"c": ClusterConfig("/r", "/w")},
                         hosts={"s": SlurmHostConfig("s", "c", partitions=[
                             PartitionConfig("a"), PartitionConfig("b")])})
    assert RemoteInventory(cfg).default_partition("s") == PartitionConfig("a")


@pytest.mark.parametrize("name", ["dispatch.yaml", "testbed.yaml"])
def test_examples_load(name: str) -> None:
    cfg = load_dispatch_config(ROOT / "examples" / name)
    assert cfg.hosts and cfg.clusters
