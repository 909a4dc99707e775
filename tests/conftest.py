"""Shared fixtures: one behavioural suite, run against every store.

``store_url`` is parametrised over the stores; ``app`` is an open App on it, ``other_app`` a
second App on the same store with its own connections and watcher (another "process" as far as
the store can tell). Cross-process tests start real subprocesses on top of these.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

import aioabort

STORES = ["sqlite"]


@pytest.fixture(params=STORES)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    kind = request.param
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'aioabort.db'}"
    raise AssertionError(kind)  # pragma: no cover


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'aioabort.db'}"


@pytest.fixture
async def app(store_url: str) -> AsyncIterator[aioabort.App]:
    async with aioabort.App(store_url) as opened:
        yield opened


@pytest.fixture
async def other_app(store_url: str, app: aioabort.App) -> AsyncIterator[aioabort.App]:
    second = aioabort.App(store_url)
    await second.open()
    try:
        yield second
    finally:
        await second.aclose()


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], *, timeout: float = 10.0, what: str = ""
) -> None:
    """Poll ``predicate`` (sync or async) until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(0.005)


async def state_of(app: aioabort.App, task_id: str) -> aioabort.TaskState:
    return await app.handle(task_id).state()
