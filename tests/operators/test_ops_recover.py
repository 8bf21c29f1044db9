"""catch: continue a failed stream with a replacement."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from talkpipe_async import Flush, source
from talkpipe_async.operators import catch, map, take
from talkpipe_async.sources import just, never, throw
from tests.helpers.ops_a import LOOPS, Gate

pytestmark = pytest.mark.anyio

PROPS = settings(max_examples=40, deadline=None)


@source
async def failing(xs: list[Any], error: BaseException) -> AsyncIterator[Any]:
    for x in xs:
        yield x
    raise error


@pytest.mark.parametrize("loop", LOOPS)
@PROPS
@given(xs=st.lists(st.integers(), max_size=20), ys=st.lists(st.integers(), max_size=20), fail=st.booleans())
def test_catch_matches_plain_python(loop: Any, xs: list[int], ys: list[int], fail: bool) -> None:
    src = failing(xs, ValueError("x")) if fail else just(*xs)
    expected = xs + ys if fail else xs

    async def main() -> list[Any]:
        return await (src | map(lambda x: x) | catch(just(*ys))).collect()

    assert anyio.run(main, backend=loop[0]) == expected


async def test_factory_gets_the_error_and_it_is_counted(anyio_backend: Any, caplog: pytest.LogCaptureFixture) -> None:
    def parse(x: str) -> int:
        return int(x)

    stage = catch(lambda exc: just(f"{type(exc).__name__}: {exc}"))
    with anyio.fail_after(10):
        out = await (just("1", "2", "x", "4") | map(parse) | stage).collect()
    assert out[:2] == [1, 2]
    assert out[2:] == ["ValueError: invalid literal for int() with base 10: 'x'"]
    assert stage.caught == 1 and isinstance(stage.last_error, ValueError)
    logged = [r for r in caplog.records if "continuing with the replacement" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None and "parse" in caplog.text


async def test_async_factory_and_metadata_in_order(anyio_backend: Any) -> None:
    f1, f2 = Flush(), Flush()

    async def fallback(exc: BaseException) -> Any:
        await anyio.lowlevel.checkpoint()
        return just(f2, "b")

    with anyio.fail_after(10):
        out = await (failing([1, f1], KeyError("k")) | catch(fallback)).collect(metadata=True)
    assert out == [1, f1, f2, "b"]


async def test_other_errors_and_replacement_errors_propagate(anyio_backend: Any) -> None:
    with anyio.fail_after(10):
        with pytest.raises(KeyError):
            await (throw(KeyError("k")) | catch(just(1), errors=ValueError)).collect()
        with pytest.raises(RuntimeError) as info:
            await (throw(ValueError) | catch(throw(RuntimeError("backup down"), name="backup"))).collect()
        assert "backup" in "".join(getattr(info.value, "__notes__", []))
    with pytest.raises(TypeError):
        catch(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        catch(just(1), errors=BaseException)  # type: ignore[arg-type]


async def test_replacement_is_closed_on_early_stop(anyio_backend: Any) -> None:
    gate = Gate(["r1", "r2"])
    with anyio.fail_after(10):
        assert await (throw(ValueError) | catch(gate.source()) | take(2)).collect() == ["r1", "r2"]
        await gate.closed.wait()
        # cancelling the run while the replacement waits stops it too
        gate2 = Gate(["r"])
        with anyio.CancelScope() as scope:
            async with (throw(ValueError) | catch(gate2.source())).stream() as items:
                async for _ in items:
                    await gate2.waiting.wait()
                    scope.cancel()
        await gate2.closed.wait()
        with anyio.move_on_after(0) as never_scope:
            await (throw(ValueError) | catch(never())).collect()
        assert never_scope.cancelled_caught
