"""Cancellation that follows the call, across three real server processes on loopback and
one store: A (uvicorn, the edge) calls B (aiohttp, ``trust_parent=True``) with httpx's
``propagate`` hook; B calls C (uvicorn, ``trust_parent=True``) with aiohttp's
``propagation()`` (tests/chain_services.py). Then the two-service example of docs/web.md
(FastAPI → aiohttp), as a reader runs it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

import aioabort
from aioabort import TaskState
from aioabort.web._requests import PARENT_HEADER, TIMEOUT_HEADER

from ._servers import aiohttp_server, uvicorn
from .conftest import has_state, wait_until

pytestmark = pytest.mark.real_stores  # other processes serve


@asynccontextmanager
async def chain(store_url: str) -> AsyncIterator[str]:
    """C, then B calling C, then A calling B; yields A's base URL."""
    ready: dict[str, Any] = {"ready": "/health", "ready_status": 200}
    async with (
        uvicorn("tests.chain_services:c", store_url, **ready) as c,
        aiohttp_server("tests.chain_services:b", store_url, **ready, NEXT_URL=c.base) as b,
        uvicorn("tests.chain_services:a", store_url, **ready, NEXT_URL=b.base) as a,
    ):
        yield a.base


def hops(answer: httpx.Response) -> list[dict[str, Any]]:
    """What A, B and C each saw, in the order of the chain."""
    body: dict[str, Any] = answer.json()
    return [body, body["next"], body["next"]["next"]]


async def test_a_chain_of_three_servers(store_url: str) -> None:
    async with (
        chain(store_url) as base,
        httpx.AsyncClient(base_url=base, timeout=60) as client,
        aioabort.App(store_url) as reader,
    ):
        # Untrusted headers at the edge change nothing: A is nobody's child, no time limit
        # reaches anyone (the named task is real).
        await reader.create("victim-1", name="export")
        spoofed = {PARENT_HEADER: "victim-1", TIMEOUT_HEADER: "0.5", "x-request-id": "u-1"}
        untrusted = await client.get("/work", headers=spoofed)
        spoofed_record = await reader.handle("u-1").wait(timeout=30)

        # A 2 s limit on A's call reaches B and C as at most 2 s left.
        limited = await client.get("/work", params={"limit": 2}, headers={"x-request-id": "t-1"})

        # Aborting A's request stops B's and C's.
        call = asyncio.create_task(
            client.get("/work", params={"seconds": 60}, headers={"x-request-id": "a-1"})
        )
        await wait_until(lambda: has_state(reader, "a-1.next.next", TaskState.STARTED), timeout=30)
        assert await reader.handle("a-1").abort("stop the chain", by="ops") is True
        response = await asyncio.wait_for(call, 30)
        ids = ["a-1", "a-1.limit", "a-1.next", "a-1.next.next"]
        records = [await reader.handle(i).wait(timeout=30) for i in ids]
        victim = await reader.handle("victim-1").state()

    assert untrusted.status_code == 200 and spoofed_record.parent_id is None
    assert [hop["time_left"] for hop in hops(untrusted)] == [None, None, None]
    assert victim is TaskState.PENDING

    assert limited.status_code == 200, limited.text
    a, b, c = hops(limited)
    assert a["time_left"] is None and 0 < a["limited"]["time_left"] <= 2
    assert 0 < b["time_left"] <= 2 and 0 < c["time_left"] <= 2

    assert response.status_code == 499 and response.json()["reason"]["message"] == "stop the chain"
    assert [r.state for r in records] == [TaskState.ABORTED] * 4
    assert [r.parent_id for r in records] == [None, "a-1", "a-1.limit", "a-1.next"]
    for record in records[1:]:
        assert record.reason is not None and record.reason.code == "parent"
        assert record.reason.message == "parent a-1 was aborted: stop the chain"


async def _child_of(reader: aioabort.App, parent: str) -> str | None:
    found = [r.id for r in await reader.tasks(name="GET /build") if r.parent_id == parent]
    return found[0] if found else None


async def test_the_two_service_example(store_url: str) -> None:
    """docs/examples/calls_fastapi.py calls docs/examples/calls_aiohttp.py, as docs/web.md
    runs them: aborting A's request stops B's; A's deadline stops both (504 from A)."""
    async with (
        aiohttp_server(
            "docs.examples.calls_aiohttp:service", store_url, ready="/nothing", ready_status=404
        ) as b,
        uvicorn(
            "docs.examples.calls_fastapi:api",
            store_url,
            ready="/nothing",
            ready_status=404,
            SERVICE_B_URL=b.base,
        ) as a,
        httpx.AsyncClient(base_url=a.base, timeout=60) as client,
        aioabort.App(store_url) as reader,
    ):
        call = asyncio.create_task(
            client.get("/report", params={"rows": 6000}, headers={"x-request-id": "r-1"})
        )

        async def b_called() -> bool:
            return await _child_of(reader, "r-1:b") is not None

        await wait_until(b_called, timeout=30, what="B's request")
        on_b = await _child_of(reader, "r-1:b")
        assert on_b is not None
        await wait_until(lambda: has_state(reader, on_b, TaskState.STARTED), timeout=30)
        assert await reader.handle("r-1").abort("user pressed stop") is True
        stopped = await asyncio.wait_for(call, 30)
        b_record = await reader.handle(on_b).wait(timeout=30)

        late = await client.get("/report", params={"rows": 6000, "deadline": 0.5})
        late_b = await _child_of(reader, f"{late.headers['x-request-id']}:b")
        assert late_b is not None
        late_record = await reader.handle(late_b).wait(timeout=30)

    assert stopped.status_code == 499
    assert stopped.json()["reason"]["message"] == "user pressed stop"
    assert b_record.state is TaskState.ABORTED and b_record.reason is not None
    assert b_record.reason.message == "parent r-1 was aborted: user pressed stop"
    assert late.status_code == 504 and late.json()["reason"]["code"] == "timeout"
    assert late_record.state is TaskState.ABORTED
