"""The package version, in one place (the build reads it; `dispatch.__version__` re-exports it)."""

__version__ = "0.1.0"
