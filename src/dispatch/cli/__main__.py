"""`python -m dispatch.cli`: the same as the `dispatch` console script."""

import sys

from .main import main

sys.exit(main())
