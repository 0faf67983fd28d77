"""SlurmJob: a validated job description rendered into an sbatch wrapper and a bootstrap.

Rendering is pure: the scripts come from package-data templates under ``templates/`` with
``{{placeholder}}`` slots filled by pieces that are already shell-quoted or validated here.
Semantics (documented choices):

- the sbatch wrapper runs ``srun bash -l BOOTSTRAP`` as one job step with the job's tasks:
  one task per node by default (``--ntasks`` is emitted only when > 1), ``ntasks`` /
  ``ntasks_per_node`` tasks otherwise. Every task runs the bootstrap; payload extraction
  happens once per node (flock + marker), so several tasks per node are safe.
- the bootstrap runs the command in a child ``bash -c`` (not ``exec``) so the EXIT trap
  can unmount JuiceFS and remove a fallback extraction dir; its exit status is the task's.
- ``payload_extract_to`` under ``$SLURM_TMPDIR`` falls back, where SLURM does not set it,
  to ``${TMPDIR:-/tmp}/dispatch-<jobid>-<host>``, shared by the job's tasks on that host.
  Each task registers in it under a lock on entry and unregisters in its EXIT trap; the
  last task out removes it (a task that starts after that extracts again into a new one,
  so the order in which srun starts and ends tasks does not matter). A user-given
  ``payload_extract_to`` is never removed, nor is SSH mode's ``mktemp -d`` fallback (the
  command may leave background processes using it).
- module loads and setup commands run with ``nounset`` off (site scripts often trip it).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Literal

from ..errors import InvalidValueError
from .arrays import ARRAY_OUTPUT, check_array_output, check_array_spec
from .mounts import JuiceFSMount, split_password
from .restarts import (
    check_restart_fields,
    check_resubmit_pattern,
    restart_command,
    restart_directives,
)

__all__ = [
    "SlurmJob",
    "SLURM_MAX_SCRIPT_BYTES",
    "NODE_LOCAL_BASE",
    "script_size",
    "shell_path",
    "sbatch_quote",
]

#: slurmctld rejects batch scripts larger than this by default (``max_script_size``).
SLURM_MAX_SCRIPT_BYTES = 4 * 1024 * 1024

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SIMPLE = re.compile(r"^[A-Za-z0-9_.\-]+$")
_SIMPLE_LIST = re.compile(r"^[A-Za-z0-9_.\-]+(,[A-Za-z0-9_.\-]+)*$")
_NODE_EXPR = re.compile(r"^[A-Za-z0-9_.\-\[\],]+$")
_CONSTRAINT = re.compile(r"^[A-Za-z0-9_.\-&|,\[\]*:()!]+$")
_MODULE = re.compile(r"^[A-Za-z0-9_.+/@:\-]+$")
_MEM = re.compile(r"^\d+(?:[KMGTkmgt][Bb]?)?$")  # sbatch takes 16G and 16GB alike
_TIME = re.compile(
    r"^(?:\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d{1,2}(?::\d{1,2}){0,2}"
    r"|[Uu][Nn][Ll][Ii][Mm][Ii][Tt][Ee][Dd]|[Ii][Nn][Ff][Ii][Nn][Ii][Tt][Ee])$"
)
_DEP_ID = r"\d+(?:_\d+)?(?:\+\d+)?"
_DEP_ONE = (
    rf"(?:singleton|(?:after|afterany|afterburstbuffer|aftercorr|afternotok|afterok)"
    rf":{_DEP_ID}(?::{_DEP_ID})*)"
)
_DEPENDENCY = re.compile(rf"^{_DEP_ONE}(?:[,?]{_DEP_ONE})*$")
_BASE64 = re.compile(r"^[A-Za-z0-9+/=\s]*$")
_VAR_PREFIX = re.compile(r"^(?:\$([A-Za-z_][A-Za-z0-9_]*)|\$\{([A-Za-z_][A-Za-z0-9_]*)\})")
_PLACEHOLDER = re.compile(r"\{\{([a-z_]+)\}\}")

#: Default node-local base directory for sbcast copies of an embedded bootstrap
#: (rendered as ``${TMPDIR:-/tmp}``).
NODE_LOCAL_BASE = "$TMPDIR"
_TMPDIR_WORDS = ("$TMPDIR", "${TMPDIR}")


def _bad(fieldname: str, value: object, why: str) -> InvalidValueError:
    return InvalidValueError(f"SlurmJob.{fieldname}: {value!r} {why}")


def _check_text(fieldname: str, value: str | None) -> None:
    """Reject newlines, NUL and other control characters (they would inject directives)."""
    if value is None:
        return
    if not isinstance(value, str):
        raise _bad(fieldname, value, "must be a string")
    if _CONTROL.search(value):
        raise _bad(fieldname, value, "must not contain newlines or control characters")


def _check_pattern(fieldname: str, value: str | None, pattern: re.Pattern[str], what: str) -> None:
    if value is None:
        return
    _check_text(fieldname, value)
    if not pattern.match(value):
        raise _bad(fieldname, value, f"is not a valid {what}")


def _check_no_nul(fieldname: str, value: str | None) -> None:
    if value is not None and "\x00" in value:
        raise InvalidValueError(f"SlurmJob.{fieldname} must not contain a NUL byte")


def script_size(script: str) -> int:
    """Size in bytes of a script as slurmctld counts it (compare with SLURM_MAX_SCRIPT_BYTES)."""
    return len(script.encode())


def sbatch_quote(value: str) -> str:
    """Quote a value for an ``#SBATCH`` line: double quotes, with ``\\``, ``"`` and ``#`` escaped.

    sbatch's directive parser splits at unquoted whitespace, toggles on ``"``, honours ``\\``
    escapes and treats an unescaped ``#`` as a comment even inside quotes.
    """
    return '"' + re.sub(r'([\\"#])', r"\\\1", value) + '"'


def shell_path(path: str) -> str:
    """Shell word for a path: quoted literally, except a leading ``~/``, ``$VAR`` or ``${VAR}``.

    ``$SLURM_TMPDIR/code`` -> ``"${SLURM_TMPDIR}"'/code'`` (expanded at run time, the rest
    literal); ``/a b`` -> ``'/a b'``.
    """
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"' + shlex.quote(path[1:])
    m = _VAR_PREFIX.match(path)
    if m is not None:
        var = m.group(1) or m.group(2)
        rest = path[m.end() :]
        return f'"${{{var}}}"' + (shlex.quote(rest) if rest else "")
    return shlex.quote(path)


def _template(name: str) -> str:
    return (resources.files("dispatch.slurm") / "templates" / name).read_text(encoding="utf-8")


def _render(name: str, **values: str) -> str:
    """Fill ``{{key}}`` slots of a package template; every slot must be given."""
    text = _template(name)
    missing = sorted(set(_PLACEHOLDER.findall(text)) - values.keys())
    if missing:
        raise KeyError(f"template {name}: no value for {missing}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def _heredoc_tag(base: str, body: str) -> str:
    """A heredoc terminator that does not occur as a line of ``body``."""
    lines = set(body.splitlines())
    tag = base + "_" + hashlib.sha256(body.encode()).hexdigest()[:12]
    while tag in lines:
        tag += "_X"
    return tag


def _wrap(text: str, width: int = 76) -> str:
    flat = "".join(text.split())
    return "\n".join(flat[i : i + width] for i in range(0, len(flat), width))


@dataclass(frozen=True)
class SlurmJob:
    """Configuration for an sbatch script."""

    name: str
    command: str
    partition: str | None = None
    nodes: int = 1
    ntasks: int = 1
    ntasks_per_node: int | None = None
    cpus_per_task: int | None = None
    gpus: int | None = None
    gpus_per_node: int | None = None
    gpu_type: str | None = None
    mem: str | None = None
    mem_per_cpu: str | None = None
    time: str | None = None
    output: str | None = None
    error: str | None = None
    workdir: str | None = None
    root_dir: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    modules: list[str] = field(default_factory=list)
    uv_groups: list[str] = field(default_factory=list)
    dependency: str | None = None
    exclusive: bool = False
    constraint: str | None = None
    account: str | None = None
    qos: str | None = None
    exclude: list[str] = field(default_factory=list)
    extra_directives: list[str] = field(default_factory=list)
    setup_commands: list[str] = field(default_factory=list)
    payload: str | None = None
    payload_extract_to: str = "$SLURM_TMPDIR/code"
    juicefs_mount: JuiceFSMount | None = None
    is_slurm: bool = True
    bootstrap_py: str | None = None
    #: Job array indexes as sbatch takes them (``"0-99%8"``, ``"0-15:4"``, ``"1,3,5"``);
    #: each element runs the command with its own ``SLURM_ARRAY_TASK_ID``.
    array: str | None = field(default=None, kw_only=True)
    #: Checkpoint/restart (`.restarts`): the tasks get ``checkpoint_signal`` this many
    #: seconds before the time limit, and SIGTERM on preemption; None: no signal.
    signal_before_end: int | None = field(default=None, kw_only=True)
    checkpoint_signal: str = field(default="USR1", kw_only=True)  # USR1 USR2 TERM INT HUP
    #: Times the job may come back (requeued, or resubmitted with its token). 0: never.
    max_restarts: int = field(default=0, kw_only=True)
    #: How it comes back: ``"requeue"`` (``--requeue``; Slurm requeues it under the same
    #: id, and where Slurm refuses it is resubmitted) or ``"resubmit"`` (``--no-requeue``,
    #: for sites that cancel preempted jobs: a new job with the same token, name, work dir,
    #: output file and checkpoint dir; an array element resubmits only itself).
    restart_by: Literal["requeue", "resubmit"] = field(default="requeue", kw_only=True)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise _bad("name", self.name, "must be a non-empty string")
        _check_text("name", self.name)
        if not isinstance(self.command, str):
            raise _bad("command", self.command, "must be a string")
        _check_no_nul("command", self.command)
        _check_pattern("partition", self.partition, _SIMPLE_LIST, "partition name")
        _check_pattern("account", self.account, _SIMPLE, "account name")
        _check_pattern("qos", self.qos, _SIMPLE_LIST, "QOS name")
        _check_pattern("gpu_type", self.gpu_type, _SIMPLE, "GPU type")
        _check_pattern("constraint", self.constraint, _CONSTRAINT, "constraint expression")
        _check_pattern("mem", self.mem, _MEM, "memory size (like 16G or 4000M)")
        _check_pattern("mem_per_cpu", self.mem_per_cpu, _MEM, "memory size (like 4G)")
        _check_pattern("time", self.time, _TIME, "time limit (like 1-02:00:00 or 30:00)")
        _check_pattern(
            "dependency", self.dependency, _DEPENDENCY, "dependency (like afterok:123:456)"
        )
        if self.mem is not None and self.mem_per_cpu is not None:
            raise _bad("mem_per_cpu", self.mem_per_cpu, "cannot be combined with mem")
        for fname in ("output", "error", "workdir", "root_dir", "payload_extract_to"):
            _check_text(fname, getattr(self, fname))
        if self.array is not None:
            check_array_spec(self.array)
            check_array_output("output", self.output)
            check_array_output("error", self.error)
        check_restart_fields(self.signal_before_end, self.checkpoint_signal, self.max_restarts,
                             self.restart_by)
        if self.restart_by == "resubmit" and self.max_restarts > 0:
            check_resubmit_pattern("output", self.output)
            check_resubmit_pattern("error", self.error)
        if not self.payload_extract_to:
            raise _bad("payload_extract_to", self.payload_extract_to, "must not be empty")
        self._check_ints()
        for fname in (
            "exclude", "extra_directives", "modules", "uv_groups", "setup_commands"
        ):
            # A bare string would be iterated character by character.
            if isinstance(getattr(self, fname), (str, bytes)):
                raise _bad(fname, getattr(self, fname), "must be a list of strings")
        if not isinstance(self.env, Mapping):
            raise _bad("env", self.env, "must be a dict of strings")
        for i, node in enumerate(self.exclude):
            _check_pattern(f"exclude[{i}]", node, _NODE_EXPR, "node name or hostlist")
        for i, directive in enumerate(self.extra_directives):
            _check_text(f"extra_directives[{i}]", directive)
            if not directive.startswith("--") or len(directive) < 3:
                raise _bad(f"extra_directives[{i}]", directive, "must start with '--'")
            if (self.restart_by == "resubmit" and self.max_restarts > 0
                    and directive.startswith("--export")
                    and not directive.startswith("--export=ALL")):
                # The successor learns its restart count and checkpoint dir from the
                # environment sbatch exports.
                raise _bad(f"extra_directives[{i}]", directive,
                           'cannot be combined with restart_by="resubmit" (the resubmitted '
                           "job needs the exported environment)")
        for i, module in enumerate(self.modules):
            _check_pattern(f"modules[{i}]", module, _MODULE, "module name")
        for i, group in enumerate(self.uv_groups):
            _check_pattern(f"uv_groups[{i}]", group, _SIMPLE, "uv dependency group")
        for key, value in self.env.items():
            if not isinstance(key, str) or not _IDENT.match(key):
                raise _bad("env", key, "is not a valid environment variable name")
            if not isinstance(value, str):
                raise InvalidValueError(f"SlurmJob.env[{key!r}] must be a string")
            _check_no_nul(f"env[{key!r}]", value)
        for i, cmd in enumerate(self.setup_commands):
            if not isinstance(cmd, str):
                raise _bad(f"setup_commands[{i}]", cmd, "must be a string")
            _check_no_nul(f"setup_commands[{i}]", cmd)
        _check_no_nul("bootstrap_py", self.bootstrap_py)
        if self.payload is not None and not _BASE64.match(self.payload):
            raise InvalidValueError("SlurmJob.payload must be base64 text (see SlurmJob.pack)")
        if self.juicefs_mount is not None:
            mount = self.juicefs_mount
            _check_text("juicefs_mount.mount_point", mount.mount_point)
            _check_text("juicefs_mount.cache_dir", mount.cache_dir)
            _check_text("juicefs_mount.cache_size", mount.cache_size)
            if _CONTROL.search(mount.redis_url):
                raise InvalidValueError(
                    "SlurmJob.juicefs_mount.redis_url must not contain control characters"
                )

    def _check_ints(self) -> None:
        for fname, minimum, optional in (
            ("nodes", 1, False),
            ("ntasks", 1, False),
            ("ntasks_per_node", 1, True),
            ("cpus_per_task", 1, True),
            ("gpus", 0, True),
            ("gpus_per_node", 0, True),
        ):
            value = getattr(self, fname)
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise _bad(fname, value, f"must be an integer >= {minimum}")

    # --- public API --------------------------------------------------------------------

    def pack(self, tarball: bytes) -> SlurmJob:
        """Return a new SlurmJob with the given tarball as payload.

        Args:
            tarball: gzip-compressed tarball bytes (from `dispatch.snapshot`); stored
                base64-encoded.

        Returns:
            A copy of this job with ``payload`` set.
        """
        return dataclasses.replace(self, payload=base64.b64encode(tarball).decode("ascii"))

    def to_script(self) -> str:
        """Generate script for backward compatibility.

        Returns:
            The bootstrap script (for SLURM and SSH alike; the sbatch wrapper is generated
            separately by `to_sbatch_script`).
        """
        return self.to_bootstrap_script()

    def to_sbatch_script(
        self, bootstrap_script_path: str, *, embed_bootstrap: str | None = None
    ) -> str:
        """Generate the sbatch wrapper script that calls srun on bootstrap.sh.

        Args:
            bootstrap_script_path: Where the bootstrap is on the nodes; may start with
                ``~/``, ``$VAR`` or ``${VAR}`` (expanded on the node). With
                ``embed_bootstrap`` it is instead the node-local base directory for the
                copies (``$TMPDIR`` falls back to ``/tmp`` when unset; see `NODE_LOCAL_BASE`).
            embed_bootstrap: A rendered bootstrap to embed, so multi-node jobs work
                without a shared directory: the wrapper writes it to a private staging
                file on the batch node, ``sbcast``s it to
                ``<base>/dispatch-<jobid>-<random>/bootstrap.sh`` (a fresh 0700 directory
                made on every node by a helper step), runs it there and removes the copies
                when the wrapper exits (a helper step on every node; a job cancelled or
                timed out can start no step, so then only the batch node's copy is
                removed and the others are left to the nodes' tmp cleaners). The
                bootstrap then counts toward the 4 MB limit.

        Returns:
            The wrapper script text.
        """
        _check_text("bootstrap_script_path", bootstrap_script_path)
        if not bootstrap_script_path:
            raise InvalidValueError("bootstrap_script_path must not be empty")
        srun = f"--cpus-per-task={self.cpus_per_task} " if self.cpus_per_task else ""
        if embed_bootstrap is None:
            launch = f"exec srun {srun}bash -l {shell_path(bootstrap_script_path)}"
        else:
            _check_no_nul("embed_bootstrap", embed_bootstrap)
            body = embed_bootstrap.rstrip("\n")
            base = bootstrap_script_path.rstrip("/") or "/"
            launch = _render(
                "sbcast.sh",
                base='"${TMPDIR:-/tmp}"' if base in _TMPDIR_WORDS else shell_path(base),
                bootstrap=body,
                eof=_heredoc_tag("DISPATCH_BOOTSTRAP_EOF", body),
                srun_options=srun,
            ).rstrip("\n")
        return _render(
            "sbatch.sh",
            directives="\n".join(f"#SBATCH {d}" for d in self.sbatch_directives()),
            launch=launch,
        )

    def sbatch_directives(self) -> list[str]:
        """The ``#SBATCH`` options (without the prefix), in a stable order.

        Returns:
            One ``--option=value`` string per directive.
        """
        d: list[str] = [f"--job-name={sbatch_quote(self.name)}"]
        if self.partition:
            d.append(f"--partition={self.partition}")
        d.append(f"--nodes={self.nodes}")
        if self.ntasks > 1:
            d.append(f"--ntasks={self.ntasks}")
        if self.ntasks_per_node is not None:
            d.append(f"--ntasks-per-node={self.ntasks_per_node}")
        if self.cpus_per_task is not None:
            d.append(f"--cpus-per-task={self.cpus_per_task}")
        gpu_count = self.gpus_per_node if self.gpus_per_node is not None else self.gpus
        if gpu_count:
            gtype = f":{self.gpu_type}" if self.gpu_type else ""
            d.append(f"--gres=gpu{gtype}:{gpu_count}")
        if self.mem is not None:
            d.append(f"--mem={self.mem}")
        if self.mem_per_cpu is not None:
            d.append(f"--mem-per-cpu={self.mem_per_cpu}")
        if self.time is not None:
            d.append(f"--time={self.time}")
        if self.array is not None:
            d.append(f"--array={self.array}")
        d.extend(restart_directives(self.signal_before_end, self.checkpoint_signal,
                                    self.max_restarts, self.restart_by))
        if self.output is not None or self.array is not None:
            d.append(f"--output={sbatch_quote(self.output or ARRAY_OUTPUT)}")
        if self.error is not None:
            d.append(f"--error={sbatch_quote(self.error)}")
        work = self._work_dir()
        if self.workdir is not None and work is not None and not work.startswith(("~", "$")):
            # sbatch does not expand ~ or $VAR; the bootstrap's cd covers those.
            d.append(f"--chdir={sbatch_quote(work)}")
        if self.dependency is not None:
            d.append(f"--dependency={self.dependency}")
        if self.exclusive:
            d.append("--exclusive")
        if self.constraint is not None:
            d.append(f"--constraint={sbatch_quote(self.constraint)}")
        if self.account is not None:
            d.append(f"--account={self.account}")
        if self.qos is not None:
            d.append(f"--qos={self.qos}")
        if self.exclude:
            d.append(f"--exclude={','.join(self.exclude)}")
        d.extend(self.extra_directives)
        return d

    def to_bootstrap_script(self, *, payload_path: str | None = None) -> str:
        """Generate the bootstrap.sh script that runs on each node.

        Args:
            payload_path: Extract this tarball file (already on the node, e.g. uploaded by
                SFTP to a shared dir) instead of the embedded base64 ``payload``. It may
                start with ``~/``, ``$VAR`` or ``${VAR}``.

        Returns:
            The bootstrap script text.
        """
        _check_text("payload_path", payload_path)
        return _render(
            "bootstrap.sh",
            kind="slurm" if self.is_slurm else "ssh",
            workdir=self._workdir_section(),
            modules=self._modules_section(),
            env=self._env_section(),
            juicefs=self._juicefs_section(),
            payload=self._payload_section(payload_path),
            bootstrap_py=self._bootstrap_py_section(),
            uv=self._uv_section(),
            setup="\n".join(self.setup_commands) if self.setup_commands else ":",
            command=self._command_section(),
        )

    # --- bootstrap sections ------------------------------------------------------------

    def _command_section(self) -> str:
        if self.signal_before_end is None or not self.is_slurm:
            return f"bash -c {shlex.quote(self.command)}"
        output = self.output or (ARRAY_OUTPUT if self.array is not None else "slurm-%j.out")
        return restart_command(self.command, self.checkpoint_signal, self.max_restarts,
                               self.restart_by, output=output, error=self.error)

    def _work_dir(self) -> str | None:
        if self.workdir and self.root_dir and not self.workdir.startswith(("/", "~", "$")):
            return self.root_dir.rstrip("/") + "/" + self.workdir
        return self.workdir or self.root_dir

    def _workdir_section(self) -> str:
        work = self._work_dir()
        if work is None:
            return 'DISPATCH_WORK_DIR="$PWD"\nexport DISPATCH_WORK_DIR'
        return "\n".join(
            [
                f"DISPATCH_WORK_DIR={shell_path(work)}",
                "export DISPATCH_WORK_DIR",
                'mkdir -p "$DISPATCH_WORK_DIR"',
                'cd "$DISPATCH_WORK_DIR"',
            ]
        )

    def _modules_section(self) -> str:
        if not self.modules:
            return ":"
        names = " ".join(shlex.quote(m) for m in self.modules)
        return "\n".join(
            [
                "if type module >/dev/null 2>&1; then",
                "    set +u",
                f"    module load {names}",
                "    set -u",
                "else",
                f"    dispatch_log {shlex.quote('no module command; not loading: ' + names)}",
                "fi",
            ]
        )

    def _env_section(self) -> str:
        if not self.env:
            return ":"
        return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in self.env.items())

    def _juicefs_section(self) -> str:
        mount = self.juicefs_mount
        if mount is None:
            return ":"
        url, secret = split_password(mount.redis_url)
        # The password goes in META_PASSWORD so it never shows up in `ps`.
        password = f"META_PASSWORD={shlex.quote(secret)} " if secret is not None else ""
        options = ""
        if mount.cache_dir:
            options += f"--cache-dir {shell_path(mount.cache_dir)} "
        if mount.cache_size:
            options += f"--cache-size {shlex.quote(mount.cache_size)} "
        return _render(
            "juicefs.sh",
            mount_point=shell_path(mount.mount_point),
            password=password,
            options=options,
            url=shlex.quote(url),
        ).rstrip("\n")

    def _code_dir_lines(self) -> str:
        target = self.payload_extract_to
        m = _VAR_PREFIX.match(target)
        if m is None or (m.group(1) or m.group(2)) != "SLURM_TMPDIR":
            return f"DISPATCH_CODE_DIR={shell_path(target)}"
        rest = target[m.end() :]
        suffix = shlex.quote(rest) if rest else ""
        if self.is_slurm:
            # Per job and node; the last task out removes it (see templates/codedir.sh).
            fallback = [
                "    " + line if line else line
                for line in _template("codedir.sh").rstrip("\n").split("\n")
            ]
        else:
            # Over SSH the dir is unique to the run and kept (the command may leave
            # background processes that use it).
            fallback = [
                "    # Stock SLURM does not set SLURM_TMPDIR: fall back to a private dir.",
                '    dispatch_base=$(mktemp -d "${TMPDIR:-/tmp}/dispatch-XXXXXX")',
                '    if [ ! -O "$dispatch_base" ]; then',
                '        dispatch_die "$dispatch_base is not owned by $(id -un)" 1',
                "    fi",
                '    chmod 0700 "$dispatch_base"',
            ]
        return "\n".join(
            [
                'if [ -n "${SLURM_TMPDIR:-}" ]; then',
                f'    DISPATCH_CODE_DIR="$SLURM_TMPDIR"{suffix}',
                "else",
                *fallback,
                f'    DISPATCH_CODE_DIR="$dispatch_base"{suffix}',
                "fi",
            ]
        )

    def _payload_section(self, payload_path: str | None) -> str:
        tar = 'tar --no-same-owner -xzf {src} -C "$DISPATCH_CODE_DIR"'
        if payload_path is not None:
            marker = "file:" + payload_path
            extract = "        " + tar.format(src=shell_path(payload_path))
        elif self.payload is not None:
            body = _wrap(self.payload)
            marker = "sha256:" + hashlib.sha256(body.encode()).hexdigest()
            tag = _heredoc_tag("DISPATCH_PAYLOAD_EOF", body)
            extract = "\n".join(
                [
                    f"        base64 -d <<'{tag}' | " + tar.format(src="-"),
                    body,
                    tag,
                ]
            )
        else:
            return ":"
        return _render(
            "payload.sh",
            code_dir=self._code_dir_lines(),
            marker=shlex.quote(marker),
            extract=extract,
        ).rstrip("\n")

    def _bootstrap_py_section(self) -> str:
        if self.bootstrap_py is None:
            return ":"
        body = self.bootstrap_py.rstrip("\n")
        tag = _heredoc_tag("DISPATCH_PY_EOF", body)
        return "\n".join(
            [
                'DISPATCH_BOOTSTRAP_PY="$PWD/.dispatch-bootstrap-${SLURM_JOB_ID:-$$}.py"',
                'dispatch_tmp=$(mktemp "$DISPATCH_BOOTSTRAP_PY.XXXXXX")',
                f"cat > \"$dispatch_tmp\" <<'{tag}'",
                body,
                tag,
                'mv -f "$dispatch_tmp" "$DISPATCH_BOOTSTRAP_PY"',
                "export DISPATCH_BOOTSTRAP_PY",
            ]
        )

    def _uv_section(self) -> str:
        if not self.uv_groups:
            return ":"
        groups = " ".join(f"--group {shlex.quote(g)}" for g in self.uv_groups)
        return "\n".join(
            [
                "if ! command -v uv >/dev/null 2>&1; then",
                '    dispatch_die "uv not found on $(uname -n)" 127',
                "fi",
                f"uv sync {groups}",
                "if [ -f .venv/bin/activate ]; then",
                "    set +u",
                "    # shellcheck disable=SC1091",
                "    . .venv/bin/activate",
                "    set -u",
                "fi",
            ]
        )
