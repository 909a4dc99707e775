"""Lifespan helpers: compose aioabort's lifespan with the application's own."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any


def combine_lifespans(
    *lifespans: Callable[[Any], contextlib.AbstractAsyncContextManager[Any]],
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[dict[str, Any]]]:
    """One lifespan that enters several in order (and leaves them in reverse), merging the
    state dicts they yield: ``FastAPI(lifespan=combine_lifespans(aborts.lifespan, mine))``."""

    @contextlib.asynccontextmanager
    async def combined(app: Any) -> AsyncIterator[dict[str, Any]]:
        state: dict[str, Any] = {}
        async with contextlib.AsyncExitStack() as stack:
            for lifespan in lifespans:
                value = await stack.enter_async_context(lifespan(app))
                if isinstance(value, dict):
                    state.update(value)
            yield state

    return combined
