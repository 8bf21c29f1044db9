"""Built-in operators: ordinary segments (and a few sources) usable with ``|``.

Families: transform, select, batch and time (part A); concurrency, combine,
errors and embedding (part B).  Each module defines ``__all__``.
"""

from .._core._public import show_as_public
from .aggregate import *  # noqa: F403
from .batch import *  # noqa: F403
from .combine import *  # noqa: F403
from .concurrency import *  # noqa: F403
from .embed import *  # noqa: F403
from .errors import *  # noqa: F403
from .fanout import *  # noqa: F403
from .inner import *  # noqa: F403
from .keyed import *  # noqa: F403
from .latest import *  # noqa: F403
from .processes import *  # noqa: F403
from .recover import *  # noqa: F403
from .select import *  # noqa: F403
from .sequence import *  # noqa: F403
from .time import *  # noqa: F403
from .transform import *  # noqa: F403

show_as_public(globals())
