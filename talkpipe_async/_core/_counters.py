"""One meaning for a stage's ``stats``: the counters of a stage, accumulated over its lifetime.

Every per-stage statistics type (``FileStats``, ``NetStats``,
``ConnectorStats``, ``SinkStats``, ``ErrorStats``, ``ForkStats``, ...) is a
dataclass of counters that follows :class:`StageCounters`:

* ``as_dict()`` returns the fields as a plain ``dict`` (lists copied), ready
  for a log line, JSON or a metrics exporter;
* the counters accumulate for as long as the object lives: a stage never
  resets the stats object it counts into, whether it was given one
  (``stats=``) or made its own; a stage that is run again keeps adding to it.
  Per-run figures are the run's :class:`~talkpipe_async.RunStats` (items,
  errors, time), or the difference of two ``as_dict()`` taken before and
  after a run.

Most fields are counts (they only grow); a few hold a level or a fact
instead, and say so in their name or docstring: ``high_water`` /
``buffer_high_water`` (the largest level seen), ``last_error``,
``close_code``, ``close_reason`` (the latest value).
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = ["CounterValue", "Counters", "StageCounters"]

CounterValue = int | float | str | list[int] | None
"""What ``as_dict()`` holds: counts, levels, and the odd latest fact (a string, a close code)."""


@runtime_checkable
class StageCounters(Protocol):
    """What every stage statistics type offers: its counters as a plain dict."""

    def as_dict(self) -> dict[str, Any]:
        """The counters as a plain ``dict`` (field name -> value)."""
        ...


class Counters:
    """Mixin for a dataclass of stage counters: :meth:`as_dict` from its fields.

    See the module docstring for the rule the counters follow (they accumulate
    over the object's lifetime; nothing resets them).
    """

    __slots__ = ()

    def as_dict(self) -> dict[str, Any]:
        """The counters as a plain ``dict`` (field name -> value; lists are copied)."""
        assert is_dataclass(self), f"{type(self).__name__} must be a dataclass"
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, list) else value
        return out
