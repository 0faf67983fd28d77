"""The documented API: every name, parameter and default of the reference page exists as
documented, and every coroutine of dispatch.aio has a blocking twin in dispatch.

The signatures below are copied from the published reference page (the specification);
the implementation may only add keyword arguments (or dataclass fields) with defaults.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path
from typing import Any

import pytest

import dispatch
import dispatch.aio as aio

_MISSING = object()

DOCUMENTED_FUNCTIONS = """
def hosts(): ...
def run(cmd, host, timeout=None): ...
def run_many(cmd, hosts, timeout=None): ...
def copy_to(local_path, host, remote_path, timeout=None): ...
def copy_from(host, remote_path, local_path, timeout=None): ...
def is_reachable(host, timeout=5.0): ...
def forward_port(host, local_port, remote_port): ...
def submit(job, host, share_dir=None, script_path=None, timeout=None): ...
def submit_packed(job, host, repo_path=None, share_dir=None, dirty=False, script_path=None,
                  timeout=None): ...
def status(job_id, host, timeout=None): ...
def cancel(job_id, host, timeout=None): ...
def job_info(job_id, host, timeout=None): ...
def queue(host, user=None, timeout=None): ...
def wait(job_id, host, poll_interval=10.0, timeout=None): ...
def partitions(host, timeout=None): ...
def partition_nodes(partition, host, timeout=None): ...
def node_info(nodename, host, timeout=None): ...
def nodes_info(nodenames, host, timeout=None): ...
def available_gpus(partition, host, gpu_type=None, timeout=None): ...
def first_node_from_nodelist(nodelist): ...
def wait_until_running(job_id, host, poll_interval=10.0, timeout=None): ...
def load_dispatch_config(path): ...
def parse_dispatch_config(cfg): ...
def discover_plain_host(ssh_alias, timeout=30.0): ...
def discover_slurm_partitions(ssh_alias, timeout=30.0): ...
def snapshot(repo_path=None, ref='HEAD'): ...
def ship(host, remote_path, repo_path=None, ref='HEAD', timeout=None): ...
def ship_dirty(host, remote_path, repo_path=None, timeout=None): ...
def ship_files(host, remote_path, files, base_path=None, timeout=None): ...
def solve_or_raise(request, config, check_availability=False, timeout=30.0): ...
def dispatch_repl(spec, hardware, dispatch_config, local_port, dirty=False,
                  check_availability=True, mem=None, timeout=60.0, startup_timeout=180.0,
                  slurm_wait_timeout=None, sync_enabled=False, extra_uv_groups=None): ...
"""

# Dataclasses: (field name, default) in documented order; _MISSING = required.
DOCUMENTED_DATACLASSES: dict[str, list[tuple[str, Any]]] = {
    "RunResult": [("returncode", _MISSING), ("stdout", _MISSING), ("stderr", _MISSING)],
    "TunnelResult": [("returncode", _MISSING), ("pid", _MISSING), ("command", _MISSING),
                     ("stderr", "")],
    "SlurmJob": [
        ("name", _MISSING), ("command", _MISSING), ("partition", None), ("nodes", 1),
        ("ntasks", 1), ("ntasks_per_node", None), ("cpus_per_task", None), ("gpus", None),
        ("gpus_per_node", None), ("gpu_type", None), ("mem", None), ("mem_per_cpu", None),
        ("time", None), ("output", None), ("error", None), ("workdir", None),
        ("root_dir", None), ("env", {}), ("modules", []), ("uv_groups", []),
        ("dependency", None), ("exclusive", False), ("constraint", None), ("account", None),
        ("qos", None), ("exclude", []), ("extra_directives", []), ("setup_commands", []),
        ("payload", None), ("payload_extract_to", "$SLURM_TMPDIR/code"),
        ("juicefs_mount", None), ("is_slurm", True), ("bootstrap_py", None),
    ],
    "SlurmResult": [("job_id", _MISSING), ("ssh_result", _MISSING)],
    "JobStatus": [(n, _MISSING) for n in ("job_id", "partition", "name", "user", "state",
                                          "time_elapsed", "nodes", "nodelist")],
    "JobInfo": [(n, _MISSING) for n in ("job_id", "name", "partition", "state", "exit_code",
                                        "elapsed", "max_rss", "nodelist")],
    "QueueResult": [("jobs", _MISSING), ("ssh_result", _MISSING)],
    "StatusResult": [("job", _MISSING), ("ssh_result", _MISSING)],
    "JobInfoResult": [("steps", _MISSING), ("ssh_result", _MISSING)],
    "NodeGres": [(n, _MISSING) for n in ("name", "type", "configured", "allocated")],
    "NodeInfo": [(n, _MISSING) for n in ("name", "state", "cpus_total", "cpus_allocated",
                                         "memory_total", "memory_allocated", "gres",
                                         "partitions", "features")],
    "PartitionInfo": [(n, _MISSING) for n in ("name", "state", "nodes", "total_cpus",
                                              "total_nodes")],
    "ClusterConfig": [("root", _MISSING), ("work", _MISSING), ("log", None), ("share", None),
                      ("mount", None), ("cache_size", None), ("cache_dir", None)],
    "PartitionConfig": [("name", _MISSING), ("default", False), ("constraint", None)],
    "PlainHostConfig": [("ssh", _MISSING), ("cluster", _MISSING), ("type", "plain"),
                        ("chips", {}), ("uv_groups", [])],
    "SlurmHostConfig": [
        ("ssh", _MISSING), ("cluster", _MISSING), ("type", "slurm"), ("partitions", []),
        ("account", None), ("qos", None), ("mem", None), ("exclude", []), ("uv_groups", []),
        ("chips", None), ("cpu_partitions", []), ("annotations", {}),
    ],
    "DispatchConfig": [("mount", None), ("proxy", None), ("clusters", {}), ("hosts", {}),
                       ("priority", []), ("gres_mapping", {})],
    "SolveResult": [(n, _MISSING) for n in ("result", "host_name", "host_config", "is_slurm",
                                            "partition")],
    "ReplResult": [
        ("ok", _MISSING), ("is_slurm", _MISSING), ("selected_host", _MISSING),
        ("ssh_host", _MISSING), ("log_path", _MISSING), ("job_id", None),
        ("allocated_hostname", None), ("remote_pid", None), ("remote_port", None),
        ("token", None), ("remote_url", None), ("local_port", None), ("local_url", None),
        ("tunnel_pid", None), ("cluster_name", None), ("cluster_root", None),
        ("cluster_mount", None), ("work_dir", None), ("mailbox_job_id", None),
        ("stderr", ""),
    ],
}

DOCUMENTED_METHODS = {
    "SlurmJob": {"pack": ["tarball"], "to_bootstrap_script": [],
                 "to_sbatch_script": ["bootstrap_script_path"], "to_script": []},
    "NodeInfo": {"get_gres": ["name"]},
    "RemoteInventory": {"get_cluster": ["name"], "get_host": ["name"], "get_chip": ["name"],
                        "plain_hosts": [], "slurm_hosts": [], "hosts_with_chip": ["chip"],
                        "total_chips": ["chip"], "default_partition": ["host"]},
}


def _documented() -> list[tuple[str, list[tuple[str, Any]]]]:
    out = []
    for node in ast.parse(DOCUMENTED_FUNCTIONS).body:
        assert isinstance(node, ast.FunctionDef)
        args = node.args.args
        defaults = [_MISSING] * (len(args) - len(node.args.defaults)) + [
            ast.literal_eval(d) for d in node.args.defaults
        ]
        out.append((node.name, [(a.arg, d) for a, d in zip(args, defaults, strict=True)]))
    return out


@pytest.mark.parametrize(("name", "params"), _documented(), ids=lambda v: str(v)[:20])
@pytest.mark.parametrize("module", [dispatch, aio], ids=["dispatch", "dispatch.aio"])
def test_documented_function_signature(module: Any, name: str,
                                       params: list[tuple[str, Any]]) -> None:
    fn = getattr(module, name)
    sig = list(inspect.signature(fn).parameters.values())
    got = [(p.name, _MISSING if p.default is inspect.Parameter.empty else p.default)
           for p in sig[: len(params)]]
    assert got == params
    for p in sig[: len(params)]:
        assert p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, (name, p.name)
    for extra in sig[len(params):]:
        assert extra.kind is inspect.Parameter.KEYWORD_ONLY or extra.default is not \
            inspect.Parameter.empty, f"{name}: added parameter {extra.name} needs a default"
    if module is dispatch:
        assert not inspect.iscoroutinefunction(fn), f"dispatch.{name} must be blocking"


@pytest.mark.parametrize("cls_name", sorted(DOCUMENTED_DATACLASSES))
def test_documented_dataclass_fields(cls_name: str) -> None:
    cls = getattr(dispatch, cls_name)
    assert getattr(aio, cls_name) is cls
    assert dataclasses.is_dataclass(cls)
    fields = [f for f in dataclasses.fields(cls) if not f.kw_only]
    documented = DOCUMENTED_DATACLASSES[cls_name]
    got = []
    for f in fields[: len(documented)]:
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = _MISSING
        got.append((f.name, default))
    assert got == documented
    for f in dataclasses.fields(cls)[len(documented):]:
        assert f.default is not dataclasses.MISSING or \
            f.default_factory is not dataclasses.MISSING, f"{cls_name}.{f.name} needs a default"


@pytest.mark.parametrize("cls_name", sorted(DOCUMENTED_METHODS))
def test_documented_methods(cls_name: str) -> None:
    cls = getattr(dispatch, cls_name)
    for meth, params in DOCUMENTED_METHODS[cls_name].items():
        sig = inspect.signature(getattr(cls, meth))
        names = [p for p in sig.parameters if p != "self"]
        assert names[: len(params)] == params, (cls_name, meth)
    assert isinstance(inspect.getattr_static(dispatch.JobInfoResult, "main"), property)


def test_every_coroutine_has_a_blocking_twin() -> None:
    for name in aio.__all__:
        obj = getattr(aio, name)
        if not inspect.iscoroutinefunction(obj):
            continue
        twin = getattr(dispatch, name)
        assert not inspect.iscoroutinefunction(twin), name
        assert twin.__wrapped__ is obj, name
        assert inspect.signature(twin) == inspect.signature(obj), name
        assert twin.__doc__ == obj.__doc__, name
        assert name in dispatch.__all__


def test_results_are_frozen() -> None:
    result = dispatch.RunResult(0, "", "")
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.returncode = 1  # type: ignore[misc]
    assert result.ok and not dispatch.RunResult(1, "", "").ok


def test_type_checkers_see_every_public_name_as_run_time_does() -> None:
    """`dispatch` builds its names lazily; its TYPE_CHECKING block must list the same ones
    (the classes re-exported, the twins made by ``blocking``), or typed users lose them."""
    tree = ast.parse(Path(dispatch.__file__).read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If)
                 and getattr(n.test, "id", "") == "TYPE_CHECKING")
    seen: set[str] = set()
    for node in block.body:
        if isinstance(node, ast.ImportFrom) and node.module == "aio":
            seen.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Assign):
            seen.update(t.id for t in node.targets if isinstance(t, ast.Name))
    assert seen == set(dispatch.__all__) - {"aio"}


def test_import_dispatch_is_cheap() -> None:
    """`import dispatch` (and so `dispatch --help`) loads neither asyncssh nor OmegaConf."""
    import subprocess
    import sys

    code = ("import sys, dispatch; "
            "print(sorted(m for m in ('asyncssh', 'omegaconf', 'dispatch.aio')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    code = "import dispatch; print(dispatch.run.__name__, 'asyncssh' in __import__('sys').modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "run True"
