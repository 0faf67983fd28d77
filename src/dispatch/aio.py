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

# Each package lists its public names in ``__all__``; this module is their union, and
# `dispatch` makes its blocking twins from this list.
from . import errors as _errors
from . import placement as _placement
from . import results as _results
from . import shipping as _shipping
from . import slurm as _slurm
from . import ssh as _ssh
from .errors import *  # noqa: F403
from .jupyter import api as _jupyter
from .jupyter.api import *  # noqa: F403
from .placement import *  # noqa: F403
from .results import *  # noqa: F403
from .shipping import *  # noqa: F403
from .slurm import *  # noqa: F403
from .ssh import *  # noqa: F403

__all__: list[str] = []
__all__ += _results.__all__
__all__ += _errors.__all__
__all__ += _ssh.__all__
__all__ += _slurm.__all__
__all__ += _placement.__all__
__all__ += _shipping.__all__
__all__ += _jupyter.__all__

#: Names that manage connections in the caller's own loop: no blocking twin.
AIO_ONLY = frozenset({"Pool", "PoolStats", "current_pool"})
