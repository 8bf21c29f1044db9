"""catch (``talkpipe_async.operators.recover``): names, texts, counters, the log line and the replacement's run.

What a user of ``catch`` relies on beyond "the replacement's items follow": the stage's name, the exact error
texts, the ``errors`` tuple, ``caught``/``last_error`` across runs, the WARNING line, metadata of the replacement
reaching only a consumer that asked for it, and the replacement running ahead by a bounded amount in a task named
after the stage.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from talkpipe_async import Flush, source
from talkpipe_async.operators import catch, map
from talkpipe_async.sources import just, throw

pytestmark = pytest.mark.anyio


def test_default_and_given_names() -> None:
    """The stage is called ``catch`` unless named (the name labels stats, errors, the log line and its task)."""
    assert catch(just(1)).label == "catch"
    assert catch(just(1), name="fallback").label == "fallback"


def test_validation_texts() -> None:
    """A replacement that is neither a source, a pipeline nor a function, and ``errors`` that are not all
    ``Exception`` types, are refused with texts naming what was given."""
    with pytest.raises(TypeError, match=r"^catch: expected a source, a pipeline or a function, got 42$"):
        catch(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^catch: errors must be Exception types, not <class 'BaseException'>$"):
        catch(just(1), errors=BaseException)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^catch: errors must be Exception types, not 'oops'$"):
        catch(just(1), errors="oops")  # type: ignore[arg-type]
    bad = (ValueError, KeyboardInterrupt)
    with pytest.raises(TypeError, match=r"^catch: errors must be Exception types, not \(<class 'ValueError'>"):
        catch(just(1), errors=bad)  # type: ignore[arg-type]


async def test_a_tuple_of_error_types_catches_each_listed_type(anyio_backend: Any) -> None:
    """``errors`` may be a tuple: each listed type is caught, any other error propagates."""
    stage: catch[Any] = catch(just("backup"), errors=(KeyError, ValueError))
    with anyio.fail_after(10):
        assert await (throw(KeyError("k")) | stage).collect() == ["backup"]
        assert await (throw(ValueError("v")) | stage).collect() == ["backup"]
        with pytest.raises(OSError):
            await (throw(OSError("o")) | stage).collect()
    assert stage.caught == 2


async def test_caught_and_last_error_add_up_over_runs(anyio_backend: Any) -> None:
    """``caught`` starts at 0 and counts every caught error over all runs of the stage; ``last_error`` is the
    latest one (None before any); a run without an error changes neither."""
    stage: catch[Any] = catch(just("r"))
    assert stage.caught == 0 and stage.last_error is None
    first, second = ValueError("one"), ValueError("two")
    with anyio.fail_after(10):
        assert await (just(1) | stage).collect() == [1]
        assert stage.caught == 0 and stage.last_error is None
        assert await (throw(first) | stage).collect() == ["r"]
        assert stage.caught == 1 and stage.last_error is first
        assert await (throw(second) | stage).collect() == ["r"]
    assert stage.caught == 2 and stage.last_error is second


async def test_each_caught_error_is_logged_at_warning_with_its_traceback(
    anyio_backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """One WARNING line per caught error, naming the stage, the error's type and text, with the error attached."""
    error = ValueError("disk on fire")
    with caplog.at_level(logging.WARNING, logger="talkpipe_async.operators"):
        with anyio.fail_after(10):
            await (throw(error) | catch(just(1), name="fallback")).collect()
    records = [r for r in caplog.records if r.name == "talkpipe_async.operators"]
    assert len(records) == 1
    record = records[0]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == "fallback: continuing with the replacement after ValueError: disk on fire"
    assert record.exc_info is not None and record.exc_info[1] is error


async def test_the_replacements_metadata_reaches_only_a_consumer_that_takes_metadata(anyio_backend: Any) -> None:
    """The replacement's metadata items are passed on in order to a consumer that takes metadata, and never
    reach one that asked for items only (directly or through a following segment)."""
    f1, f2 = Flush(), Flush()
    with anyio.fail_after(10):
        assert await (throw(ValueError) | catch(just(f1, 1, f2, 2))).collect() == [1, 2]
        assert await (throw(ValueError) | catch(just(f1, 1, f2, 2)) | map(lambda x: x)).collect() == [1, 2]
        assert await (throw(ValueError) | catch(just(f1, 1, f2, 2))).collect(metadata=True) == [f1, 1, f2, 2]


async def test_the_factory_is_given_the_caught_error(anyio_backend: Any) -> None:
    """A factory replacement is called with the very exception that was caught (sync and async factories)."""
    seen: list[BaseException] = []
    error = KeyError("gone")

    def fixed(exc: BaseException) -> Any:
        seen.append(exc)
        return just("sync")

    async def later(exc: BaseException) -> Any:
        seen.append(exc)
        return just("async")

    with anyio.fail_after(10):
        assert await (throw(error) | catch(fixed)).collect() == ["sync"]
        assert await (throw(error) | catch(later)).collect() == ["async"]
    assert seen == [error, error]


async def test_the_replacement_runs_a_bounded_amount_ahead_in_a_task_named_after_the_stage(anyio_backend: Any) -> None:
    """The replacement runs in one producer task named after the stage, and while the consumer holds the first
    replacement item it has produced more than ``capacity`` and at most ``2 * capacity + 1`` items (the batch being
    handed out, a full lane, and the one it waits to put), never the whole stream."""
    produced = 0
    ahead = -1
    tasks: set[str] = set()

    @source
    async def counting() -> AsyncIterator[int]:
        nonlocal produced
        tasks.add(anyio.get_current_task().name or "")
        for i in range(1000):
            produced += 1
            yield i

    with anyio.fail_after(10):
        async with (throw(ValueError) | catch(counting(), capacity=3, name="fallback")).stream() as items:
            async for _ in items:
                await anyio.wait_all_tasks_blocked()
                ahead = produced
                break
    assert 3 < ahead <= 2 * 3 + 1
    assert any(name.startswith("talkpipe producer of fallback") for name in tasks), tasks
