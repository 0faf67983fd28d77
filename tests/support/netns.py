"""A silent blackhole address from a network namespace this test creates (and removes).

A veth pair joins the host to a private namespace; the host's neighbour entry for the
namespace's address carries a MAC nobody has, so every packet to it is dropped without
an answer (no RST, no ICMP): connects hang until their timeout. Only addresses of the
namespace created here are used (10.199.N.0/30, N from the pid).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator

__all__ = ["blackhole_address"]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def blackhole_address() -> Iterator[str]:
    """Yield an IPv4 address (in our own netns) that silently drops every packet."""
    tag = f"{os.getpid() % 100000}"
    ns, host_if, ns_if = f"dtest{tag}", f"dva{tag}", f"dvb{tag}"
    n = os.getpid() % 250 + 1
    host_addr, ns_addr = f"10.199.{n}.1", f"10.199.{n}.2"
    _ip("netns", "add", ns)
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", ns)
        _ip("addr", "add", f"{host_addr}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("netns", "exec", ns, "ip", "addr", "add", f"{ns_addr}/30", "dev", ns_if)
        _ip("netns", "exec", ns, "ip", "link", "set", ns_if, "up")
        _ip("neigh", "replace", ns_addr, "lladdr", "02:00:00:00:00:99", "dev", host_if,
            "nud", "permanent")
        yield ns_addr
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            _ip("netns", "del", ns)  # removes both ends of the veth pair
        with contextlib.suppress(subprocess.SubprocessError):
            _ip("link", "del", host_if)
