"""`python -m dispatch.cli`: the same as the `dispatch` console script."""

import sys

from .main import main

if __name__ == "__main__":  # not when a documentation tool imports every module
    sys.exit(main())
