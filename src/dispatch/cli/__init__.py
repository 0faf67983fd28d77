"""The `dispatch` command line; `dispatch.cli.main:main` is the console script."""
