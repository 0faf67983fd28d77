"""Internals of the ``dispatch`` command line: pure renderers and terminal progress."""
