"""Real uvicorn servers on loopback: processes running docs/examples/fastapi_app.py (two
instances share one store; work on one is aborted through the other), and servers in this
process for the edges a client can reach, on every store."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import httpx
import pytest

import aioabort
from aioabort import TaskState
from aioabort.web import AbortMiddleware

from . import worker_app
from ._processes import worker
from ._servers import fastapi_example, in_process, uvicorn
from .conftest import has_state, raw_http, read_to_eof, wait_until


@pytest.mark.real_stores  # another process serves
async def test_request_on_a_aborted_through_b(store_url: str) -> None:
    async with (
        fastapi_example(store_url) as a,
        fastapi_example(store_url) as b,
        httpx.AsyncClient(base_url=a, timeout=60) as on_a,
        httpx.AsyncClient(base_url=b, timeout=60) as on_b,
    ):
        long = asyncio.create_task(
            on_a.get("/render", params={"seconds": 60}, headers={"x-request-id": "long-1"})
        )

        async def running() -> bool:
            answer = await on_b.get("/aioabort/tasks/long-1")
            return answer.status_code == 200 and answer.json()["state"] == "STARTED"

        await wait_until(running, timeout=30)
        abort = await on_b.post("/aioabort/tasks/long-1/abort", json={"reason": "cancelled on B"})
        assert abort.status_code == 202 and abort.json()["aborted"] is True
        response = await asyncio.wait_for(long, 30)
        assert response.status_code == 499
        assert response.json()["reason"]["message"] == "cancelled on B"
        record = (await on_b.get("/aioabort/tasks/long-1")).json()
    assert record["state"] == "ABORTED" and record["reason"]["code"] == "user"
    async with aioabort.App(store_url) as reader:
        stored = await reader.handle("long-1").record()
    assert stored.state is TaskState.ABORTED and stored.reason is not None
    assert stored.reason.message == "cancelled on B"


@pytest.mark.real_stores  # another process serves
async def test_job_started_on_a_watched_and_aborted_on_b(store_url: str) -> None:
    async with (
        fastapi_example(store_url) as a,
        fastapi_example(store_url) as b,
        httpx.AsyncClient(base_url=a, timeout=60) as on_a,
        httpx.AsyncClient(base_url=b, timeout=60) as on_b,
    ):
        started = await on_a.post("/reports", params={"sections": 400, "seconds": 0.05})
        assert started.status_code == 202
        job = started.json()["id"]
        events: list[tuple[str, dict[str, Any]]] = []

        async def listen() -> None:
            async with on_b.stream("GET", f"/aioabort/tasks/{job}/events") as stream:
                event = ""
                async for line in stream.aiter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        events.append((event, json.loads(line[6:])))

        listener = asyncio.create_task(listen())
        await wait_until(
            lambda: sum(1 for e, d in events if e == "state" and d["progress"]) >= 3,
            timeout=30,
            what="progress events",
        )
        assert (await on_b.post(f"/aioabort/tasks/{job}/abort", json={})).status_code == 202
        await asyncio.wait_for(listener, 30)
        status = (await on_a.get(f"/reports/{job}")).json()
    progress = [d["progress"] for e, d in events if e == "state" and d["progress"] is not None]
    assert progress == sorted(progress) and 0 < progress[-1] < 1
    assert events[-1] == ("end", {"state": "ABORTED"})
    assert status["state"] == "ABORTED" and status["reason"]["by"].startswith("web:")


@pytest.mark.real_stores  # another process serves
async def test_a_request_cannot_take_over_a_queued_job(store_url: str) -> None:
    """DESIGN rule 11: a job queued under an id the application chose; a client sends a
    request with that id. It is refused (409, JSON) and writes nothing: the job still runs on
    a real worker and ends SUCCESS with its result. An id aborted before its request came
    answers 499 at once."""
    os.environ["AIOABORT_URL"] = store_url
    try:
        async with worker_app.app as producer, fastapi_example(store_url) as base:
            handle = await worker_app.add.apply([20, 22], task_id="export-bob-2")
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                hijack = await client.get("/render", headers={"x-request-id": "export-bob-2"})
                assert hijack.status_code == 409
                assert hijack.json()["error"] == "request_id_in_use"
                assert (await handle.record()).state is TaskState.PENDING  # nothing written
                await producer.handle("early-1").abort("before it came", create=True)
                early = await client.get("/render", headers={"x-request-id": "early-1"})
                assert early.status_code == 499
                assert early.json()["reason"]["message"] == "before it came"
            async with worker(store_url):
                assert await handle.result(timeout=30) == 42
            record = await handle.record()
    finally:
        del os.environ["AIOABORT_URL"]
    assert record.state is TaskState.SUCCESS and record.result == 42


@pytest.mark.real_stores  # another process serves
async def test_an_aborted_stream_looks_cut(store_url: str) -> None:
    """DESIGN rule 12, on the wire of a real uvicorn: a complete export ends with the final
    chunk; an aborted one never does, and the connection closes."""
    async with fastapi_example(store_url) as base, aioabort.App(store_url) as app:
        reader, writer, data = await raw_http(
            base, "/export?rows=3&seconds=0", {"x-request-id": "whole-1", "connection": "close"}
        )
        whole = data + await read_to_eof(reader)
        writer.close()
        assert b"transfer-encoding: chunked" in whole.lower()
        assert whole.endswith(b"0\r\n\r\n")  # the complete one: its final chunk

        reader, writer, data = await raw_http(
            base, "/export?rows=100000&seconds=0.01", {"x-request-id": "cut-1"}, until=b"\n5,25\n"
        )
        assert await app.handle("cut-1").abort("stop the export") is True
        cut = data + await read_to_eof(reader)  # the server closes the connection
        writer.close()
        assert b" 200 " in cut.split(b"\r\n", 1)[0] and b"row,square" in cut
        assert not cut.endswith(b"0\r\n\r\n")
        record = await app.handle("cut-1").wait(timeout=20)
    assert record.state is TaskState.ABORTED


@pytest.mark.real_stores  # another process serves
@pytest.mark.parametrize(
    "target",
    ["docs.examples.litestar_app:app", "docs.examples.django_asgi:application"],
    ids=["litestar", "django"],
)
async def test_the_middleware_under_other_frameworks(store_url: str, target: str) -> None:
    """The pure ASGI middleware, as docs/web.md shows it, under Litestar and under Django's
    ASGI handler on a real uvicorn: a request aborted from another App answers 499 with the
    reason and stops its view; an id naming a queued job is refused (409)."""
    async with (
        uvicorn(target, store_url, ready="/health", ready_status=200) as server,
        httpx.AsyncClient(base_url=server.base, timeout=60) as client,
        aioabort.App(store_url) as elsewhere,
    ):
        request = asyncio.create_task(
            client.get("/render", params={"seconds": 60}, headers={"x-request-id": "fw-1"})
        )
        await wait_until(lambda: has_state(elsewhere, "fw-1", TaskState.STARTED), timeout=30)
        assert await elsewhere.handle("fw-1").abort("stopped from elsewhere") is True
        response = await asyncio.wait_for(request, 30)
        assert response.status_code == 499
        assert response.json()["reason"]["message"] == "stopped from elsewhere"
        record = await elsewhere.handle("fw-1").wait(timeout=20)
        assert record.state is TaskState.ABORTED
        await elsewhere.create("queued-job", name="export")
        taken = await client.get("/render", headers={"x-request-id": "queued-job"})
        assert taken.status_code == 409
        assert (await elsewhere.handle("queued-job").state()) is TaskState.PENDING


# -- the edges a client can reach, on a uvicorn in this process (so on every store) ----------


def effect_site(store_url: str, **options: Any) -> tuple[aioabort.App, Any, list[str]]:
    """Starlette behind the middleware, whose one endpoint has a side effect before any
    await: it notes the path it served in the returned list."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    aborts = aioabort.App(store_url)
    ran: list[str] = []

    async def effect(request: Request) -> JSONResponse:
        ran.append(request.scope["path"])  # before any await
        return JSONResponse({"ran": True})

    api = Starlette(lifespan=aborts.lifespan, routes=[Route("/{path:path}", effect)])
    return aborts, AbortMiddleware(api, aborts=aborts, **options), ran


MIDDLEWARE_MODES = pytest.mark.parametrize(
    "options",
    [{}, {"abort_on_disconnect": True}, {"abort_as_disconnect": True}],
    ids=["plain", "abort_on_disconnect", "abort_as_disconnect"],
)


@MIDDLEWARE_MODES
async def test_a_request_aborted_before_it_came_never_runs(
    store_url: str, options: dict[str, bool]
) -> None:
    """``abort(create=True)`` before the request: 499 at once with the reason, and the
    endpoint never runs (its side effect comes before any await); the record stays as the
    abort left it. A request with another id runs."""
    aborts, asgi, ran = effect_site(store_url, **options)
    async with in_process(asgi) as base, httpx.AsyncClient(base_url=base, timeout=30) as client:
        assert await aborts.handle("early-1").abort("before it came", create=True) is True
        early = await client.get("/effect", headers={"x-request-id": "early-1"})
        other = await client.get("/other", headers={"x-request-id": "other-1"})
        record = await aborts.handle("early-1").record()
    assert early.status_code == 499 and early.headers["x-request-id"] == "early-1"
    assert early.json()["reason"]["message"] == "before it came"
    assert other.status_code == 200
    assert ran == ["/other"]
    assert record.state is TaskState.ABORTED and record.started_at is None


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/a%00b", "GET /a%00b"),
        ("/c%01%7F%C2%85d", "GET /c%01%7F%C2%85d"),  # C0, DEL and C1 control characters
        ("/x%ED%A0%80y", "GET /x\ufffd\ufffd\ufffdy"),  # uvicorn decodes it so
        ("/" + "%00" * 100, "GET /" + "%00" * 65),  # capped, never inside an escape
    ],
    ids=["nul", "controls", "bad-utf8", "long"],
)
async def test_any_path_is_stored_as_a_name(store_url: str, path: str, name: str) -> None:
    """The record's name is the request's path in a form every store holds: NUL and other
    control characters (and lone surrogates) escaped as the client sent them, at most 200
    characters. The request itself is served as usual."""
    aborts, asgi, ran = effect_site(store_url)
    async with in_process(asgi) as base, httpx.AsyncClient(base_url=base, timeout=30) as client:
        response = await client.get(path, headers={"x-request-id": "odd-1"})
        # The response goes out before the scope's end is written: wait for that write.
        record = await aborts.handle("odd-1").wait(timeout=20)
    assert response.status_code == 200 and len(ran) == 1
    assert record.state is TaskState.SUCCESS and record.name == name
