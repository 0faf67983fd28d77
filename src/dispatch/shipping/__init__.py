"""Code shipping: local tarballs of a repository and their atomic extraction on a host."""

from .remote import ship, ship_dirty, ship_files
from .tarball import pack_files, snapshot, snapshot_dirty

__all__ = ["snapshot", "snapshot_dirty", "pack_files", "ship", "ship_dirty", "ship_files"]
