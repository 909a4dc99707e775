"""aiohttp: setup() with cleanup_ctx and a typed AppKey; requests aborted from elsewhere.
A real aiohttp server on loopback (aiohttp's TestServer)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import aioabort
from aioabort import TaskState
from aioabort.aiohttp import AIOABORT, SCOPE, setup


@pytest.fixture
async def served(
    store_url: str,
) -> AsyncIterator[
    tuple[TestClient[web.Request, web.Application], aioabort.App, dict[str, asyncio.Event]]
]:
    aborts = aioabort.App(store_url)
    entered: dict[str, asyncio.Event] = {}
    app = web.Application()
    setup(app, aborts)

    async def slow(request: web.Request) -> web.Response:
        scope = request[SCOPE]
        entered.setdefault(scope.id, asyncio.Event()).set()
        await asyncio.sleep(60)
        return web.json_response({"done": True})

    async def fast(request: web.Request) -> web.Response:
        return web.json_response({"open": request.app[AIOABORT].is_open})

    async def export(request: web.Request) -> web.StreamResponse:
        rows, seconds = int(request.query["rows"]), float(request.query["seconds"])
        response = web.StreamResponse(headers={"content-type": "text/csv"})
        await response.prepare(request)
        await response.write(b"row,square\n")
        for row in range(rows):
            await asyncio.sleep(seconds)
            await response.write(f"{row},{row * row}\n".encode())
        await response.write_eof()
        return response

    app.router.add_get("/slow", slow)
    app.router.add_get("/fast", fast)
    app.router.add_get("/export", export)
    async with TestClient(TestServer(app)) as client:
        yield client, aborts, entered
    assert not aborts.is_open  # closed with the server (cleanup_ctx)


async def test_setup_opens_the_app_with_the_server(
    served: tuple[TestClient[web.Request, web.Application], aioabort.App, dict[str, asyncio.Event]],
) -> None:
    client, aborts, _ = served
    response = await client.get("/fast")
    assert response.status == 200 and await response.json() == {"open": True}
    request_id = response.headers["X-Request-Id"]
    assert (await aborts.handle(request_id).record()).state is TaskState.SUCCESS


async def test_request_aborted_from_elsewhere(
    served: tuple[TestClient[web.Request, web.Application], aioabort.App, dict[str, asyncio.Event]],
    store_url: str,
) -> None:
    client, aborts, entered = served
    request = asyncio.create_task(client.get("/slow", headers={"X-Request-Id": "aio-1"}))
    await asyncio.wait_for(entered.setdefault("aio-1", asyncio.Event()).wait(), 10)
    async with aioabort.App(store_url) as elsewhere:
        assert await elsewhere.handle("aio-1").abort("stop from another App") is True
    response = await asyncio.wait_for(request, 10)
    assert response.status == 499
    body = await response.json()
    assert body["error"] == "aborted" and body["reason"]["message"] == "stop from another App"
    assert (await aborts.handle("aio-1").record()).state is TaskState.ABORTED


@pytest.mark.parametrize("value", ["bad value", "x" * 300])
async def test_bad_request_ids(
    served: tuple[TestClient[web.Request, web.Application], aioabort.App, dict[str, asyncio.Event]],
    value: str,
) -> None:
    client, aborts, _ = served
    response = await client.get("/fast", headers={"X-Request-Id": value})
    assert response.status == 400
    assert await aborts.tasks() == []


async def test_an_aborted_stream_looks_cut(
    served: tuple[TestClient[web.Request, web.Application], aioabort.App, dict[str, asyncio.Event]],
) -> None:
    """DESIGN rule 12, on the wire of a real aiohttp server, as under uvicorn: a complete
    export ends with the final chunk; an aborted one never does, and the connection closes."""
    from .conftest import raw_http, read_to_eof

    client, aborts, _ = served
    base = str(client.make_url("/")).rstrip("/")
    reader, writer, data = await raw_http(
        base, "/export?rows=3&seconds=0", {"X-Request-Id": "whole-1", "Connection": "close"}
    )
    whole = data + await read_to_eof(reader)
    writer.close()
    assert b"transfer-encoding: chunked" in whole.lower() and whole.endswith(b"0\r\n\r\n")

    reader, writer, data = await raw_http(
        base, "/export?rows=100000&seconds=0.01", {"X-Request-Id": "cut-1"}, until=b"\n5,25\n"
    )
    assert await aborts.handle("cut-1").abort("stop the export") is True
    cut = data + await read_to_eof(reader)
    writer.close()
    assert b" 200 " in cut.split(b"\r\n", 1)[0] and b"row,square" in cut
    assert not cut.endswith(b"0\r\n\r\n")
    assert (await aborts.handle("cut-1").wait(timeout=20)).state is TaskState.ABORTED


# -- the router and the middleware's options, as under ASGI ---------------------------------


@contextlib.asynccontextmanager
async def routed(
    store_url: str, *, abort_on_disconnect: bool = False
) -> AsyncIterator[
    tuple[TestClient[web.Request, web.Application], aioabort.App, dict[str, asyncio.Event]]
]:
    """A real aiohttp server: setup() (excluding the router), the router at /aioabort for
    requests with ``x-role: admin``, and a slow handler."""
    from aioabort.aiohttp import router

    aborts = aioabort.App(store_url)
    entered: dict[str, asyncio.Event] = {}
    app = web.Application()
    setup(app, aborts, exclude=("/aioabort", "/health"), abort_on_disconnect=abort_on_disconnect)

    async def slow(request: web.Request) -> web.Response:
        entered.setdefault(request[SCOPE].id, asyncio.Event()).set()
        await asyncio.sleep(60)
        return web.json_response({"done": True})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"scoped": SCOPE in request})

    app.router.add_get("/slow", slow)
    app.router.add_get("/health", health)
    app.add_subapp(
        "/aioabort", router(aborts, authorize=lambda r: r.headers.get("x-role") == "admin")
    )
    async with TestClient(TestServer(app)) as client:
        yield client, aborts, entered


ADMIN = {"x-role": "admin"}


async def test_the_router_answers_as_the_starlette_one(store_url: str) -> None:
    async with routed(store_url) as (client, aborts, _):
        await aborts.create("queued-1", name="job")
        await aborts.create("done-1")
        await aborts.handle("done-1").abort("x")
        for method, path in [
            ("GET", "/aioabort/"),
            ("GET", "/aioabort/tasks"),
            ("GET", "/aioabort/tasks/queued-1"),
            ("POST", "/aioabort/tasks/queued-1/abort"),
            ("GET", "/aioabort/tasks/queued-1/events"),
        ]:
            refused = await client.request(method, path)
            assert refused.status == 403, (method, path)
            assert "queued-1" not in await refused.text()
            html = path == "/aioabort/"  # a page for a browser; JSON for the API
            assert refused.content_type == ("text/html" if html else "application/json")
            assert ("<h1>Access denied</h1>" in await refused.text()) is html
        listing = await client.get("/aioabort/tasks", headers=ADMIN, params={"state": "PENDING"})
        body = await listing.json()
        assert listing.status == 200 and [t["id"] for t in body["tasks"]] == ["queued-1"]
        assert body["counts"]["PENDING"] == 1 and body["has_more"] is False
        search = await client.get(
            "/aioabort/tasks",
            headers=ADMIN,
            params=[("id_prefix", "queued"), ("label", "user=nobody"), ("limit", "1")],
        )
        assert (await search.json())["tasks"] == []
        more = await client.get("/aioabort/tasks", headers=ADMIN, params={"limit": "1"})
        assert (await more.json())["has_more"] is True
        for bad in ({"limit": "0"}, {"label": "no-equals-sign"}):
            assert (await client.get("/aioabort/tasks", headers=ADMIN, params=bad)).status == 400
        assert (await client.get("/aioabort/tasks/missing", headers=ADMIN)).status == 404
        page = await client.get("/aioabort/", headers=ADMIN)
        assert page.status == 200 and "<title>aioabort</title>" in await page.text()
        not_json = await client.post("/aioabort/tasks/queued-1/abort", headers=ADMIN, data=b"{}")
        assert not_json.status == 415
        cross = await client.post(
            "/aioabort/tasks/queued-1/abort",
            headers={**ADMIN, "Origin": "https://evil.example"},
            json={},
        )
        assert cross.status == 403 and (await cross.json())["error"] == "cross_site"
        too_big = await client.post(
            "/aioabort/tasks/queued-1/abort",
            headers={**ADMIN, "Content-Type": "application/json"},
            data=b'{"reason": "' + b"x" * 100_000 + b'"}',
        )
        assert too_big.status == 413
        assert await aborts.handle("queued-1").state() is TaskState.PENDING
        aborted = await client.post(
            "/aioabort/tasks/queued-1/abort", headers=ADMIN, json={"reason": "from aiohttp"}
        )
        assert aborted.status == 202 and (await aborted.json())["aborted"] is True
        finished = await client.post("/aioabort/tasks/done-1/abort", headers=ADMIN, json={})
        assert finished.status == 409
        early = await client.post(
            "/aioabort/tasks/early-1/abort", headers=ADMIN, json={"create": True}
        )
        assert early.status == 202
        await aborts.create("labelled-0")
        preview = await client.post(
            "/aioabort/abort", headers=ADMIN, json={"name": "job", "dry_run": True}
        )
        assert preview.status == 200 and (await preview.json())["ids"] == []  # none named so
        assert (await client.post("/aioabort/abort", headers=ADMIN, json={})).status == 400
        record = await aborts.handle("queued-1").record()
    assert record.state is TaskState.ABORTED and record.reason is not None
    assert record.reason.message == "from aiohttp"
    assert record.reason.by is not None and record.reason.by.startswith("web:")


async def test_the_router_streams_a_task_to_its_end(store_url: str) -> None:
    async with routed(store_url) as (client, aborts, _):
        await aborts.create("streamed")
        events: list[str] = []
        async with client.get("/aioabort/tasks/streamed/events", headers=ADMIN) as stream:
            assert stream.headers["Content-Type"].startswith("text/event-stream")
            async for line in stream.content:
                text = line.decode().strip()
                if text.startswith("event: "):
                    events.append(text[7:])
                    if len(events) == 1:
                        await aborts.handle("streamed").abort("the end")
    assert events == ["state", "state", "end"]


async def test_excluded_paths_run_without_a_scope(store_url: str) -> None:
    async with routed(store_url) as (client, aborts, _):
        response = await client.get("/health")
        assert response.status == 200 and await response.json() == {"scoped": False}
        assert await aborts.tasks() == []


async def test_a_disconnect_aborts_the_request_when_opted_in(store_url: str) -> None:
    async with routed(store_url, abort_on_disconnect=True) as (client, aborts, entered):
        url = client.make_url("/")
        _, writer = await asyncio.open_connection(url.host, url.port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\nX-Request-Id: gone-1\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(entered.setdefault("gone-1", asyncio.Event()).wait(), 10)
        writer.close()  # the client goes away
        record = await aborts.handle("gone-1").wait(timeout=20)
    assert record.state is TaskState.ABORTED
    assert record.reason is not None and record.reason.code == "disconnect"


async def test_a_disconnect_is_seen_without_handler_cancellation(store_url: str) -> None:
    """run_app()'s default: aiohttp lets the handler run on after its client left; with
    abort_on_disconnect the middleware notices the closed connection and aborts."""
    aborts = aioabort.App(store_url)
    entered = asyncio.Event()
    app = web.Application()
    setup(app, aborts, abort_on_disconnect=True)

    async def slow(request: web.Request) -> web.Response:
        entered.set()
        await asyncio.sleep(60)
        return web.json_response({"done": True})

    app.router.add_get("/slow", slow)
    runner = web.AppRunner(app)  # handler_cancellation=False, as web.run_app()
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\nX-Request-Id: gone-2\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(entered.wait(), 10)
        writer.close()
        record = await aborts.handle("gone-2").wait(timeout=20)
    finally:
        await runner.cleanup()
    assert record.state is TaskState.ABORTED
    assert record.reason is not None and record.reason.code == "disconnect"


# -- the edges a client can reach ------------------------------------------------------------


@contextlib.asynccontextmanager
async def effects(
    store_url: str, *, abort_on_disconnect: bool = False
) -> AsyncIterator[tuple[TestClient[web.Request, web.Application], aioabort.App, list[str]]]:
    """A real aiohttp server whose one handler has a side effect before any await: it notes
    the path it served in the yielded list."""
    aborts = aioabort.App(store_url)
    ran: list[str] = []
    app = web.Application()
    setup(app, aborts, abort_on_disconnect=abort_on_disconnect)

    async def effect(request: web.Request) -> web.Response:
        ran.append(request.path)  # before any await
        return web.json_response({"ran": True})

    app.router.add_get("/{tail:.*}", effect)
    async with TestClient(TestServer(app)) as client:
        yield client, aborts, ran


@pytest.mark.parametrize("abort_on_disconnect", [False, True])
async def test_a_request_aborted_before_it_came_never_runs(
    store_url: str, abort_on_disconnect: bool
) -> None:
    """``abort(create=True)`` before the request: 499 at once with the reason, and the
    handler never runs (its side effect comes before any await)."""
    async with effects(store_url, abort_on_disconnect=abort_on_disconnect) as (
        client,
        aborts,
        ran,
    ):
        assert await aborts.handle("early-1").abort("before it came", create=True) is True
        early = await client.get("/effect", headers={"X-Request-Id": "early-1"})
        body = await early.json()
        other = await client.get("/other", headers={"X-Request-Id": "other-1"})
        record = await aborts.handle("early-1").record()
    assert early.status == 499 and early.headers["X-Request-Id"] == "early-1"
    assert body["error"] == "aborted" and body["reason"]["message"] == "before it came"
    assert other.status == 200
    assert ran == ["/other"]
    assert record.state is TaskState.ABORTED and record.started_at is None


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/a%00b", "GET /a%00b"),
        ("/c%01%7F%C2%85d", "GET /c%01%7F%C2%85d"),  # C0, DEL and C1 control characters
        ("/x%ED%A0%80y", "GET /x%ED%A0%80y"),  # aiohttp keeps what is not UTF-8 escaped
        ("/" + "%00" * 100, "GET /" + "%00" * 65),  # capped, never inside an escape
    ],
    ids=["nul", "controls", "bad-utf8", "long"],
)
async def test_any_path_is_stored_as_a_name(store_url: str, path: str, name: str) -> None:
    """The record's name is the request's path in a form every store holds (as under the
    ASGI middleware); the request itself is served as usual."""
    from .conftest import raw_http, read_to_eof

    async with effects(store_url) as (client, aborts, ran):
        base = str(client.make_url("/")).rstrip("/")
        reader, writer, data = await raw_http(
            base, path, {"X-Request-Id": "odd-1", "Connection": "close"}
        )
        data += await read_to_eof(reader)
        writer.close()
        record = await aborts.handle("odd-1").record()
    assert data.startswith(b"HTTP/1.1 200 ") and len(ran) == 1
    assert record.state is TaskState.SUCCESS and record.name == name


async def test_a_malformed_abort_body_is_a_400_and_writes_nothing(store_url: str) -> None:
    """As under Starlette: 400 naming the problem, nothing written."""
    from .test_web import MALFORMED_ABORTS, MALFORMED_BULK

    json_body = {**ADMIN, "Content-Type": "application/json"}
    async with routed(store_url) as (client, aborts, _):
        await aborts.create("target", name="job")
        for path, cases in [
            ("/aioabort/tasks/target/abort", MALFORMED_ABORTS),
            ("/aioabort/abort", MALFORMED_BULK),
        ]:
            for body, detail in cases:
                answer = await client.post(path, headers=json_body, data=body)
                text = await answer.text()
                assert answer.status == 400, (body, text)
                assert detail in (await answer.json())["detail"], (body, text)
        assert await aborts.handle("target").state() is TaskState.PENDING


async def test_text_the_app_refuses_in_a_query_is_a_400(store_url: str) -> None:
    """As under Starlette: the App's UsageError becomes a 400 naming the problem."""
    from .test_web import BAD_QUERIES

    answers = []
    async with routed(store_url) as (client, _, _):
        for params in BAD_QUERIES:
            answer = await client.get("/aioabort/tasks", headers=ADMIN, params=params)
            answers.append((answer.status, await answer.json()))
    assert [(status, bool(body.get("detail"))) for status, body in answers] == [(400, True)] * len(
        BAD_QUERIES
    ), answers
