"""The asynchronous API: the same names and parameters as `dispatch`, as coroutines.

Use these from your own event loop (an orchestration service, an async notebook):

```python
import dispatch.aio as dx

async with dx.Pool(max_connections_per_host=4):
    results = await dx.run_many("nvidia-smi -L", ["gpu1", "gpu2"])
```

`Pool`, `PoolStats` and `current_pool` exist only here: they manage connections in the
caller's event loop (the blocking API in `dispatch` keeps its own pool).
"""

from __future__ import annotations

from . import errors as _errors
from . import results as _results
from . import shipping as _shipping
from . import slurm as _slurm
from . import ssh as _ssh
from .errors import *  # noqa: F403
from .jupyter import api as _repl
from .jupyter.api import *  # noqa: F403

# Each module lists its public names in ``__all__``; this module is their union.
from .placement import config as _config
from .placement import hardware as _hardware
from .placement import solve as _solve
from .placement.config import *  # noqa: F403
from .placement.hardware import *  # noqa: F403
from .placement.solve import *  # noqa: F403
from .results import *  # noqa: F403
from .shipping import *  # noqa: F403
from .slurm import *  # noqa: F403
from .ssh import *  # noqa: F403

__all__ = [
    *_results.__all__,
    *_errors.__all__,
    *_ssh.__all__,
    *_slurm.__all__,
    *_hardware.__all__,
    *_config.__all__,
    *_solve.__all__,
    *_shipping.__all__,
    *_repl.__all__,
]
