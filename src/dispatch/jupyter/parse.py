"""Pure parsers for starting a Jupyter session: its log (URL, port, token), PIDs, log tails.

Jupyter prints where it listens in two places: the ``is running at:`` lines
(``[I ... ServerApp] http://127.0.0.1:8888/lab?token=abc``) and, when it generated the token,
the ``copy and paste one of these URLs:`` block. When the token was set by configuration or
``JUPYTER_TOKEN`` it is masked as ``token=...``; `parse_jupyter_log` then reports the
URL and port with ``token=None``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "JupyterUrl",
    "JupyterStartup",
    "parse_jupyter_url",
    "parse_jupyter_log",
    "jupyter_failure",
    "claim_failure",
    "parse_listener_pids",
    "parse_jpserver_pid",
    "parse_getent_hosts",
    "parse_node_address",
    "log_tail",
]

# A URL Jupyter prints: http(s)://host:port/path?query. Hosts may be names, IPv4 or [IPv6].
_URL_RE = re.compile(r"\bhttps?://(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):\d{1,5}(?:/[^\s'\"<>]*)?")
# A Jupyter log line: "[I 2026-11-26 12:34:51.103 ServerApp] ..." (also NotebookApp, LabApp).
_APP_LINE_RE = re.compile(r"^\[[A-Z] [^\]]*\b(?:ServerApp|NotebookApp|LabApp)\]\s*(.*)$")
_READY_RE = re.compile(r"is running at:\s*$|Or copy and paste one of these URLs:")
_FAILURE_RES = (
    re.compile(r"ERROR: the Jupyter server could not be started.*"),
    re.compile(r"^jupyter[-\w]*: error: .*"),
    re.compile(r"^\S*Error: .*"),
    re.compile(r"^error: .*"),
)
_MASKED_TOKENS = {"", "...", "…"}


@dataclass(frozen=True)
class JupyterUrl:
    """One URL from Jupyter's log, split into parts; ``token`` None when absent or masked."""

    url: str
    scheme: str
    host: str
    port: int
    path: str
    token: str | None

    @property
    def is_loopback(self) -> bool:
        """True for ``127.0.0.1``/``localhost``/``::1`` URLs."""
        return self.host in ("127.0.0.1", "localhost", "::1") or self.host.startswith("127.")

    @property
    def is_wildcard(self) -> bool:
        """True for ``0.0.0.0``/``::`` URLs (the bind address, not a reachable host)."""
        return self.host in ("0.0.0.0", "::")


@dataclass(frozen=True)
class JupyterStartup:
    """What a started Jupyter server printed: every URL, and the port/token/path they agree on."""

    urls: tuple[JupyterUrl, ...]
    port: int
    token: str | None
    path: str
    scheme: str

    def url_for(self, host: str, port: int | None = None, token: str | None = None) -> str:
        """Rewrite the server's URL for `host` (and `port`), with `token` if known.

        Args:
            host: Host name or address to put in the URL (IPv6 is bracketed).
            port: Port to use instead of the server's.
            token: Token to use instead of the one Jupyter printed.

        Returns:
            The URL, with `?token=...` when a token is known.
        """
        netloc = f"[{host}]" if ":" in host else host
        url = f"{self.scheme}://{netloc}:{port if port is not None else self.port}{self.path}"
        tok = token if token is not None else self.token
        return f"{url}?token={tok}" if tok else url


def parse_jupyter_url(text: str) -> JupyterUrl | None:
    """Parse one `http://host:port/path?token=...` URL; None if it is not one.

    Args:
        text: Text containing the URL.

    Returns:
        The URL's parts (`token` None when absent or masked), or None.
    """
    match = _URL_RE.search(text)
    if match is None:
        return None
    url = match.group(0).rstrip(".,;)")
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return None
    if port is None or not 0 < port < 65536 or parts.hostname is None:
        return None
    tokens = parse_qs(parts.query, keep_blank_values=True).get("token", [])
    token = tokens[0] if tokens and tokens[0] not in _MASKED_TOKENS else None
    return JupyterUrl(
        url=url,
        scheme=parts.scheme,
        host=parts.hostname,
        port=port,
        path=parts.path or "/",
        token=token,
    )


def _candidate_urls(text: str) -> list[JupyterUrl]:
    """URLs Jupyter printed as its address, in log order (not URLs in unrelated output)."""
    found: list[JupyterUrl] = []
    in_block = False
    for raw in text.splitlines():
        line = raw.rstrip()
        app = _APP_LINE_RE.match(line)
        if app is not None:
            in_block = bool(_READY_RE.search(line))
            body = app.group(1).strip()
            url = parse_jupyter_url(body) if body.startswith(("http://", "https://")) else None
        elif in_block and line.startswith((" ", "\t")):
            body = line.strip()
            url = parse_jupyter_url(body) if body.startswith(("http://", "https://")) else None
        else:
            if _READY_RE.search(line):
                in_block = True
            elif line.strip() and not line.startswith((" ", "\t")):
                in_block = False
            continue
        if url is not None:
            found.append(url)
    return found


def parse_jupyter_log(text: str) -> JupyterStartup | None:
    """Return the server's URLs once Jupyter says it is running; None until then.

    The port and path come from the first URL; the token is the first unmasked one (None
    when Jupyter masks it because it was set by configuration or `JUPYTER_TOKEN`). A last
    line without its newline is ignored: the log may be read while Jupyter writes it.

    Args:
        text: The Jupyter log so far.

    Returns:
        What the started server printed, or None while it has not started.
    """
    complete = text[: text.rfind("\n") + 1]
    urls = _candidate_urls(complete)
    if not urls:
        return None
    first = urls[0]
    token = next((u.token for u in urls if u.token is not None), None)
    return JupyterStartup(
        urls=tuple(urls), port=first.port, token=token, path=first.path, scheme=first.scheme
    )


def jupyter_failure(text: str) -> str | None:
    """Find the first line of `text` that says Jupyter (or its launcher) failed.

    Args:
        text: The Jupyter log so far.

    Returns:
        That line, or None when the log shows no failure.
    """
    for raw in text.splitlines():
        line = raw.strip()
        app = _APP_LINE_RE.match(line)
        body = app.group(1).strip() if app else line
        for pattern in _FAILURE_RES:
            if pattern.search(body):
                return line
    return None


#: How the GPU claim lines (`dispatch.placement.claim_gpus_script`) say they failed.
_CLAIM_FAILURE = "dispatch: cannot claim"


def claim_failure(text: str) -> str | None:
    """Find why the bootstrap's GPU claim failed, in its log.

    Args:
        text: The log of a bootstrap that starts with GPU claim lines.

    Returns:
        The claim's own message without its `dispatch: ` prefix (for example `cannot claim
        1 GPU(s): only 0 of 2 free GPU(s) unclaimed (...)`), or None when it says none.
    """
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith(_CLAIM_FAILURE):
            return line[len("dispatch: "):]
    return None


_SS_PID_RE = re.compile(r"pid=(\d+)")


def parse_listener_pids(ss_output: str, port: int) -> list[int]:
    """Find the PIDs listening on `port` in `ss -Hltnp` output.

    Args:
        ss_output: The output, with process fields like `users:(("jupyter",pid=1,fd=5))`.
        port: The TCP port to look for.

    Returns:
        The listening PIDs, each once, in output order.
    """
    pids: list[int] = []
    for line in ss_output.splitlines():
        fields = line.split()
        if len(fields) > 1 and fields[1] == "LISTEN":
            fields = fields[1:]  # ss without -t prints the netid ("tcp") first
        if len(fields) < 5:
            continue
        local_port = fields[3].rsplit(":", 1)[-1]
        if not local_port.isdigit() or int(local_port) != port:
            continue
        for pid in _SS_PID_RE.findall(line):
            if int(pid) not in pids:
                pids.append(int(pid))
    return pids


_JPSERVER_RE = re.compile(r"jpserver-(\d+)(?:-open\.html|\.json)")


def parse_jpserver_pid(text: str) -> int | None:
    """Find the server's PID from its runtime file name in the log (`jpserver-1234-open.html`).

    Args:
        text: The Jupyter log.

    Returns:
        The PID, or None when the log names no runtime file.
    """
    match = _JPSERVER_RE.search(text)
    return int(match.group(1)) if match else None


def parse_getent_hosts(text: str) -> str | None:
    """Find the first address in `getent hosts NAME` output (`127.0.0.1  node1`).

    Args:
        text: getent's output.

    Returns:
        The address, or None for empty output.
    """
    for line in text.splitlines():
        fields = line.split()
        if fields:
            return fields[0]
    return None


def log_tail(text: str, lines: int = 20, max_chars: int = 4000) -> str:
    """Return the last `lines` lines of `text` (at most `max_chars`), for error messages.

    Args:
        text: The log.
        lines: How many lines to keep.
        max_chars: How many characters to keep at most (from the end).

    Returns:
        The tail of the log.
    """
    tail = "\n".join(text.rstrip("\n").splitlines()[-lines:])
    return tail[-max_chars:]


def parse_node_address(scontrol_text: str) -> str | None:
    """Find a node's address in `scontrol show node -o NAME`: NodeAddr, else NodeHostName.

    Args:
        scontrol_text: scontrol's one-line output.

    Returns:
        The address, or None when neither is given (or both are `(null)`).
    """
    fields: dict[str, str] = {}
    for token in scontrol_text.split():
        key, sep, value = token.partition("=")
        if sep and key in ("NodeAddr", "NodeHostName") and key not in fields:
            fields[key] = value
    for key in ("NodeAddr", "NodeHostName"):
        value = fields.get(key, "")
        if value and value not in ("(null)", "N/A"):
            return value
    return None
