"""load_dispatch_config / parse_dispatch_config / RemoteInventory: parsing and located errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dispatch.errors import ConfigError, InvalidValueError
from dispatch.placement import (
    SUPPORTED_CHIPS,
    ClusterConfig,
    DispatchConfig,
    PartitionConfig,
    PlainHostConfig,
    RemoteInventory,
    SlurmHostConfig,
    load_dispatch_config,
    parse_dispatch_config,
)

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
        # a cluster name the solver cannot use
        ("clusters: {my lab: {root: /r, work: /w}}", "clusters.my lab", "'my lab'"),
        # an int where a path belongs is not silently turned into a relative path
        ("clusters: {a: {root: 5, work: /w}}", "clusters.a.root", "5"),
        # a typo'd key on a host
        ("clusters: {a: {root: /r, work: /w}}\nhosts: {h: {ssh: h, cluster: a, chipz: {}}}",
         "hosts.h.chipz", "unknown key"),
        ("clusters: {a: {root: /r, work: /w}}\n"
         "hosts: {h: {ssh: h, cluster: a, type: slurm, partitons: [gpu]}}",
         "hosts.h.partitons", "unknown key"),
        # the GPU busy rule (plain hosts only)
        ("clusters: {a: {root: /r, work: /w}}\nhosts: {h: {ssh: h, cluster: a, gpu_busy_mib: 0}}",
         "hosts.h.gpu_busy_mib", "(got 0)"),
        ("clusters: {a: {root: /r, work: /w}}\n"
         "hosts: {h: {ssh: h, cluster: a, gpu_busy_mib: 100MiB}}",
         "hosts.h.gpu_busy_mib", "'100MiB'"),
        ("clusters: {a: {root: /r, work: /w}}\n"
         "hosts: {h: {ssh: h, cluster: a, gpu_busy_utilization: 150}}",
         "hosts.h.gpu_busy_utilization", "(got 150)"),
        ("clusters: {a: {root: /r, work: /w}}\n"
         "hosts: {h: {ssh: h, cluster: a, gpu_busy_utilization: false}}",
         "hosts.h.gpu_busy_utilization", "(got False)"),
        ("clusters: {a: {root: /r, work: /w}}\n"
         "hosts: {h: {ssh: h, cluster: a, type: slurm, gpu_busy_mib: 100}}",
         "hosts.h.gpu_busy_mib", "unknown key"),
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


ALL_FIELDS = """
mount: redis://jfs:6379/1
proxy: http://proxy:3128
clusters:
  c:
    root: /r
    work: /w
    log: /l
    share: /s
    mount: /mnt/jfs
    cache_size: "1024"
    cache_dir: /tmp/jc
hosts:
  p:
    type: plain
    ssh: p-alias
    cluster: c
    chips: {h100: 2, a6000: 1}
    uv_groups: [cuda, dev]
    gpu_busy_mib: 500
    gpu_busy_utilization: 95
  s:
    type: slurm
    ssh: s-alias
    cluster: c
    partitions: [debug, {name: gpu, default: true, constraint: h100}]
    account: acct
    qos: high
    mem: 64G
    exclude: [n1, n2]
    uv_groups: [cuda]
    chips: {h100: 8}
    cpu_partitions: [cpu]
    annotations: {support: help@example.org, time_limit: "4:00:00"}
priority: [s, p]
gres_mapping: {h100: h100, a6000: rtx_a6000}
"""


def test_every_documented_field_round_trips(tmp_path: Path) -> None:
    expected = DispatchConfig(
        mount="redis://jfs:6379/1",
        proxy="http://proxy:3128",
        clusters={"c": ClusterConfig("/r", "/w", log="/l", share="/s", mount="/mnt/jfs",
                                     cache_size="1024", cache_dir="/tmp/jc")},
        hosts={
            "p": PlainHostConfig("p-alias", "c", chips={"h100": 2, "a6000": 1},
                                 uv_groups=["cuda", "dev"], gpu_busy_mib=500,
                                 gpu_busy_utilization=95),
            "s": SlurmHostConfig(
                "s-alias", "c",
                partitions=[PartitionConfig("debug"),
                            PartitionConfig("gpu", default=True, constraint="h100")],
                account="acct", qos="high", mem="64G", exclude=["n1", "n2"],
                uv_groups=["cuda"], chips={"h100": 8}, cpu_partitions=["cpu"],
                annotations={"support": "help@example.org", "time_limit": "4:00:00"}),
        },
        priority=["s", "p"],
        gres_mapping={"h100": "h100", "a6000": "rtx_a6000"},
    )
    assert load_dispatch_config(write(tmp_path, ALL_FIELDS)) == expected
    # Every field of every config dataclass is set to a non-default value above.
    import dataclasses
    for obj in (expected, expected.clusters["c"], expected.hosts["p"], expected.hosts["s"]):
        for f in dataclasses.fields(obj):
            if f.name != "type":
                assert getattr(obj, f.name) != f.default, (type(obj).__name__, f.name)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n"])
def test_empty_file_is_an_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_dispatch_config(path)
    assert str(info.value).startswith(f"{path}: ") and "empty" in str(info.value)


def test_yaml_syntax_error_gives_line_number(tmp_path: Path) -> None:
    path = write(tmp_path, "clusters:\n  a: {root: /r, work: /w}\nhosts:\n  h: [unclosed\n  x: 1\n")
    with pytest.raises(ConfigError) as info:
        load_dispatch_config(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: invalid YAML at line 5"), msg
    assert "\n" not in msg and info.value.__cause__ is None and info.value.__suppress_context__


def test_duplicate_key_gives_line_number(tmp_path: Path) -> None:
    path = write(tmp_path, "clusters:\n  a: {root: /r, work: /w}\n"
                           "hosts:\n  h:\n    ssh: h\n    cluster: a\n    ssh: other\n")
    with pytest.raises(ConfigError) as info:
        load_dispatch_config(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: invalid YAML at line 7"), msg
    assert "duplicate key ssh" in msg


def test_unset_env_var_names_variable_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "clusters:\n  a: {root: /r, work: '${oc.env:DISPATCH_UNSET_XYZ}'}\n"
                           "hosts: {h: {ssh: h, cluster: a}}\n")
    with pytest.raises(ConfigError) as info:
        load_dispatch_config(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: clusters.a.work: "), msg
    assert "environment variable 'DISPATCH_UNSET_XYZ' is not set" in msg
    # No OmegaConf internals (object_type=..., multi-line full_key dumps) leak through.
    assert "object_type" not in msg and "\n" not in msg


def test_unsupported_python_value_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^clusters\.c\.root: unsupported value"):
        parse_dispatch_config({"clusters": {"c": {"root": object(), "work": "/w"}}})


def test_gpu_busy_rule_defaults_and_off(tmp_path: Path) -> None:
    cfg = load_dispatch_config(write(tmp_path, """
        clusters: {a: {root: /r, work: /w}}
        hosts:
          box: {ssh: box, cluster: a}
          quiet: {ssh: q, cluster: a, gpu_busy_mib: 2048, gpu_busy_utilization: null}
    """))
    box, quiet = cfg.hosts["box"], cfg.hosts["quiet"]
    assert isinstance(box, PlainHostConfig) and isinstance(quiet, PlainHostConfig)
    assert (box.gpu_busy_mib, box.gpu_busy_utilization) == (100, 90)
    assert (quiet.gpu_busy_mib, quiet.gpu_busy_utilization) == (2048, None)
