"""The ASGI integration through httpx.ASGITransport (and raw ASGI where a client cannot
express the case, such as a disconnect): middleware, router, lifespan, dependencies."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, MutableMapping
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from starlette.responses import StreamingResponse

import aioabort
from aioabort import TaskState
from aioabort.web import AbortMiddleware, Aborts, combine_lifespans, request_scope, router
from aioabort.web._requests import request_name

from .conftest import has_state, wait_until


class Site:
    """A FastAPI app with the middleware and the router, and a client for it."""

    def __init__(self, url: str, *, authorize: Any = True, **middleware: Any) -> None:
        self.aborts = aioabort.App(url)
        self.entered: dict[str, asyncio.Event] = {}
        self.streamed: list[int] = []
        self.api = FastAPI(lifespan=self.aborts.lifespan)
        check = (lambda request: True) if authorize is True else authorize
        self.api.add_middleware(
            AbortMiddleware, aborts=self.aborts, exclude=("/aioabort",), **middleware
        )
        self.api.mount("/aioabort", router(self.aborts, authorize=check))

        @self.api.get("/slow")
        async def slow(
            scope: Annotated[aioabort.AbortScope, Depends(request_scope)],
        ) -> dict[str, str]:
            self.entered.setdefault(scope.id, asyncio.Event()).set()
            await asyncio.sleep(60)
            return {"done": "no"}

        @self.api.get("/fast")
        async def fast(aborts: Aborts) -> dict[str, Any]:
            return {"open": aborts.is_open}

        @self.api.get("/stream")
        async def stream(request: Request) -> StreamingResponse:
            scope = request_scope(request)

            async def chunks() -> AsyncIterator[bytes]:
                for i in range(1000):
                    self.streamed.append(i)
                    if i == 3:
                        self.entered.setdefault(scope.id, asyncio.Event()).set()
                    yield f"chunk {i}\n".encode()
                    await asyncio.sleep(0.01)

            return StreamingResponse(chunks(), media_type="text/plain")

    def event(self, request_id: str) -> asyncio.Event:
        return self.entered.setdefault(request_id, asyncio.Event())

    @property
    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.api), base_url="http://testserver"
        )


@pytest.fixture
async def site(store_url: str) -> AsyncIterator[Site]:
    site = Site(store_url)
    async with site.aborts.lifespan(site.api):
        yield site


async def test_request_aborted_through_the_router(site: Site) -> None:
    async with site.client as client:
        request = asyncio.create_task(client.get("/slow", headers={"x-request-id": "req-1"}))
        await asyncio.wait_for(site.event("req-1").wait(), 10)
        answer = await client.post("/aioabort/tasks/req-1/abort", json={"reason": "too slow"})
        assert answer.status_code == 202 and answer.json()["aborted"] is True
        response = await asyncio.wait_for(request, 10)
    assert response.status_code == 499
    assert response.headers["x-request-id"] == "req-1"
    body = response.json()
    assert body["error"] == "aborted" and body["task_id"] == "req-1"
    assert body["reason"]["message"] == "too slow" and body["reason"]["code"] == "user"
    record = await site.aborts.handle("req-1").record()
    assert record.state is TaskState.ABORTED and record.name == "GET /slow"


async def test_an_aborted_stream_is_never_completed(site: Site) -> None:
    """Raw ASGI (a client library would hide it): the stream's body iterator runs inside the
    scope and stops at the abort, and the middleware never sends the final body message, so
    the server cuts the connection (DESIGN rule 12; the wire is tested against real servers
    in test_web_servers.py and test_aiohttp.py)."""
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # no disconnect: the server would be waiting
        return {}  # pragma: no cover

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    running = asyncio.create_task(site.api(_http_scope("/stream", "stream-1"), receive, send))
    await asyncio.wait_for(site.event("stream-1").wait(), 10)
    assert await site.aborts.handle("stream-1").abort("enough chunks") is True
    await asyncio.wait_for(running, 10)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    assert 4 <= len(bodies) < 1000 and len(site.streamed) < 1000
    assert all(m.get("more_body") for m in bodies)  # never the final one
    record = await site.aborts.handle("stream-1").record()
    assert record.state is TaskState.ABORTED


async def test_missing_header_gets_a_generated_id(site: Site) -> None:
    async with site.client as client:
        response = await client.get("/fast")
    assert response.status_code == 200 and response.json() == {"open": True}
    request_id = response.headers["x-request-id"]
    assert len(request_id) == 32
    record = await site.aborts.handle(request_id).record()
    assert record.state is TaskState.SUCCESS


@pytest.mark.parametrize("value", ["has space", "x" * 201, "semi;colon", "é"])
async def test_invalid_or_oversized_header_is_refused(site: Site, value: str) -> None:
    async with site.client as client:
        response = await client.get("/fast", headers=[(b"x-request-id", value.encode())])
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request_id"
    assert await site.aborts.tasks() == []


async def test_reused_request_id_is_refused(site: Site) -> None:
    async with site.client as client:
        first = await client.get("/fast", headers={"x-request-id": "once"})
        second = await client.get("/fast", headers={"x-request-id": "once"})
    assert first.status_code == 200
    assert second.status_code == 409 and second.json()["error"] == "request_id_in_use"


async def test_router_list_show_abort_codes(site: Site) -> None:
    await site.aborts.create("queued-1", name="job")
    await site.aborts.create("queued-2", name="job")
    async with aioabort.abortable("done-1", app=site.aborts, name="other"):
        pass
    async with site.client as client:
        listing = (await client.get("/aioabort/tasks")).json()
        assert {t["id"] for t in listing["tasks"]} == {"queued-1", "queued-2", "done-1"}
        assert listing["counts"]["PENDING"] == 2 and listing["counts"]["SUCCESS"] == 1
        page = (await client.get("/aioabort/tasks", params={"limit": 1, "offset": 1})).json()
        assert len(page["tasks"]) == 1
        pending = (await client.get("/aioabort/tasks", params={"state": "pending"})).json()
        assert {t["id"] for t in pending["tasks"]} == {"queued-1", "queued-2"}
        named = (await client.get("/aioabort/tasks", params={"name": "other"})).json()
        assert [t["id"] for t in named["tasks"]] == ["done-1"]
        assert (await client.get("/aioabort/tasks", params={"limit": 0})).status_code == 400
        assert (await client.get("/aioabort/tasks", params={"limit": "x"})).status_code == 400
        assert (await client.get("/aioabort/tasks", params={"state": "NOPE"})).status_code == 400
        one = (await client.get("/aioabort/tasks/queued-1")).json()
        assert one["state"] == "PENDING" and [e["kind"] for e in one["events"]] == ["queued"]
        assert (await client.get("/aioabort/tasks/missing")).status_code == 404
        aborted = await client.post("/aioabort/tasks/queued-1/abort", json={})
        assert aborted.status_code == 202 and aborted.json()["task"]["state"] == "ABORTED"
        assert aborted.json()["task"]["reason"]["by"].startswith("web:")
        again = await client.post("/aioabort/tasks/queued-1/abort", json={})
        assert again.status_code == 409  # ABORTED is finished
        assert (await client.post("/aioabort/tasks/done-1/abort", json={})).status_code == 409
        assert (await client.post("/aioabort/tasks/missing/abort", json={})).status_code == 404
        bad = await client.post(
            "/aioabort/tasks/queued-2/abort",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        assert bad.status_code == 400
        assert (await client.get("/aioabort/tasks/queued-2")).json()["state"] == "PENDING"
        page = await client.get("/aioabort/")
        assert page.status_code == 200 and "<title>aioabort</title>" in page.text


#: Query parameters the App refuses (a UsageError, on every store): the router answers 400.
BAD_QUERIES = [{"name": "a\x00b"}, {"id_prefix": "\x00"}, {"label": "user=\x00"}]


async def test_text_the_app_refuses_in_a_query_is_a_400(site: Site) -> None:
    """``GET /tasks?name=%00``: the App's UsageError becomes a 400 naming the problem (it
    was a 503 on PostgreSQL, as if the store were down)."""
    async with site.client as client:
        answers = [await client.get("/aioabort/tasks", params=p) for p in BAD_QUERIES]
    assert [(a.status_code, bool(a.json().get("detail"))) for a in answers] == [(400, True)] * len(
        BAD_QUERIES
    ), [a.text for a in answers]


async def test_router_pages_and_searches(site: Site) -> None:
    """What the dashboard asks for: a page by id prefix, name, labels and state, with
    ``has_more`` for the next page; a bad label filter is a 400."""
    made = [(f"alice/export-{i}", "export", "alice") for i in range(5)]
    for task_id, name, user in [
        *made,
        ("bob/export-0", "export", "bob"),
        ("alice/i", "import", "alice"),
    ]:
        async with aioabort.abortable(task_id, app=site.aborts, name=name, labels={"user": user}):
            pass

    async with site.client as client:

        async def page(**params: Any) -> dict[str, Any]:
            answer = await client.get("/aioabort/tasks", params=params)
            assert answer.status_code == 200, answer.text
            body: dict[str, Any] = answer.json()
            return body

        first = await page(id_prefix="alice/", limit=4)
        assert len(first["tasks"]) == 4 and first["has_more"] is True
        rest = await page(id_prefix="alice/", limit=4, offset=4)
        assert len(rest["tasks"]) == 2 and rest["has_more"] is False
        seen = {t["id"] for t in first["tasks"] + rest["tasks"]}
        assert seen == {f"alice/export-{i}" for i in range(5)} | {"alice/i"}
        both = await page(label=["user=alice"], name="export", state="SUCCESS")
        assert {t["id"] for t in both["tasks"]} == {f"alice/export-{i}" for i in range(5)}
        assert (await page(label="user=bob"))["tasks"][0]["labels"] == {"user": "bob"}
        assert (await page(id_prefix="alice/", state="PENDING"))["tasks"] == []
        assert first["counts"]["SUCCESS"] == 7  # the counts are the store's, not the filter's
        for bad in ({"label": "nokey"}, {"label": "=x"}):
            assert (await client.get("/aioabort/tasks", params=bad)).status_code == 400


async def test_two_aborts_at_once_through_the_router(site: Site) -> None:
    async with site.client as client:
        request = asyncio.create_task(client.get("/slow", headers={"x-request-id": "twice"}))
        await asyncio.wait_for(site.event("twice").wait(), 10)
        answers = await asyncio.gather(
            client.post("/aioabort/tasks/twice/abort", json={"reason": "one"}),
            client.post("/aioabort/tasks/twice/abort", json={"reason": "two"}),
        )
        await request
    recorded = [a for a in answers if a.status_code == 202 and a.json()["aborted"]]
    assert len(recorded) == 1  # exactly one recorded the abort; the other saw it aborting/done
    for other in answers:
        if other is not recorded[0]:
            assert other.status_code in (202, 409)
            if other.status_code == 202:
                assert other.json()["aborted"] is False
    record = await site.aborts.handle("twice").record()
    assert record.reason is not None
    assert record.reason.message == json.loads(recorded[0].request.content)["reason"]


async def test_events_of_a_finished_task_end_at_once(site: Site) -> None:
    """(The live stream, state by state, is tested against a real uvicorn in
    test_web_servers.py: httpx's ASGITransport buffers whole responses.)"""
    await site.aborts.create("ended")
    await site.aborts.handle("ended").abort("before it began")
    async with site.client as client:
        response = await client.get("/aioabort/tasks/ended/events")
        assert (await client.get("/aioabort/tasks/missing/events")).status_code == 404
    assert response.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in response.text.split("\n\n") if b.strip()]
    assert blocks[0].startswith("event: state\n") and '"state": "ABORTED"' in blocks[0]
    assert blocks[-1] == 'event: end\ndata: {"state": "ABORTED"}'


@pytest.mark.parametrize("authorize", [None, False, "async-false"])
async def test_router_refuses_until_authorized(store_url: str, authorize: Any) -> None:
    async def async_no(request: Request) -> bool:
        return False

    check = {None: None, False: (lambda request: False), "async-false": async_no}[authorize]
    site = Site(store_url, authorize=check)
    async with site.aborts.lifespan(site.api):
        await site.aborts.create("secret")
        async with site.client as client:
            for method, path in [
                ("GET", "/aioabort/"),
                ("GET", "/aioabort/tasks"),
                ("GET", "/aioabort/tasks/secret"),
                ("POST", "/aioabort/tasks/secret/abort"),
                ("GET", "/aioabort/tasks/secret/events"),
            ]:
                response = await client.request(method, path)
                assert response.status_code == 403, (method, path)
                assert "secret" not in response.text
                # The dashboard's page refuses a browser with a page; the API with JSON.
                page = path == "/aioabort/"
                kind = "text/html" if page else "application/json"
                assert response.headers["content-type"].startswith(kind), (method, path)
                if page:
                    assert "<h1>Access denied</h1>" in response.text
        assert await site.aborts.handle("secret").state() is TaskState.PENDING


async def test_async_authorize_hook_allows(store_url: str) -> None:
    async def admins(request: Request) -> bool:
        return request.headers.get("x-role") == "admin"

    site = Site(store_url, authorize=admins)
    async with site.aborts.lifespan(site.api), site.client as client:
        assert (await client.get("/aioabort/tasks")).status_code == 403
        assert (await client.get("/aioabort/tasks", headers={"x-role": "admin"})).status_code == 200


async def test_app_not_open_is_503(store_url: str) -> None:
    site = Site(store_url)
    async with site.client as client:
        response = await client.get("/fast")
        assert response.status_code == 503 and "lifespan" in response.text
        assert (await client.get("/aioabort/tasks")).status_code == 503
        page = await client.get("/aioabort/")
        assert page.status_code == 503 and page.headers["content-type"].startswith("text/html")
        assert "lifespan" in page.text


async def test_lazy_open_for_servers_without_lifespan(store_url: str) -> None:
    site = Site(store_url, lazy_open=True)
    try:
        async with site.client as client:
            assert (await client.get("/fast")).status_code == 200
        assert site.aborts.is_open
    finally:
        await site.aborts.aclose()


async def test_combine_lifespans_merges_state(store_url: str) -> None:
    from contextlib import asynccontextmanager

    order: list[str] = []

    @asynccontextmanager
    async def mine(app: Any) -> AsyncIterator[dict[str, Any]]:
        order.append("mine up")
        yield {"db": "ready"}
        order.append("mine down")

    aborts = aioabort.App(store_url)
    combined = combine_lifespans(aborts.lifespan, mine)
    async with combined(None) as state:
        assert state["aborts"] is aborts and state["db"] == "ready" and aborts.is_open
    assert order == ["mine up", "mine down"] and not aborts.is_open


def _http_scope(path: str, request_id: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"t"), (b"x-request-id", request_id.encode())],
        "client": ("127.0.0.1", 1),
        "server": ("t", 80),
    }


async def test_disconnect_before_the_response_aborts_when_opted_in(store_url: str) -> None:
    site = Site(store_url, abort_on_disconnect=True)
    sent: list[MutableMapping[str, Any]] = []
    gone = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if not sent and not gone.is_set():
            gone.set()
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(0.2)  # then the client goes away, before any response
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    async with site.aborts.lifespan(site.api):
        await asyncio.wait_for(site.api(_http_scope("/slow", "gone-1"), receive, send), 10)
        record = await site.aborts.handle("gone-1").record()
    assert record.state is TaskState.ABORTED
    assert record.reason is not None and record.reason.code == "disconnect"


async def test_disconnect_after_a_finished_response_does_not_abort(store_url: str) -> None:
    site = Site(store_url, abort_on_disconnect=True)
    sent: list[MutableMapping[str, Any]] = []
    first = True
    done = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()  # as uvicorn does: after the body, receive() waits for the end
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    async with site.aborts.lifespan(site.api):
        await site.api(_http_scope("/fast", "normal-1"), receive, send)
        record = await site.aborts.handle("normal-1").record()
    assert sent[0]["status"] == 200
    assert record.state is TaskState.SUCCESS and record.reason is None


async def test_disconnect_without_opt_in_does_not_abort(site: Site) -> None:
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await site.api(_http_scope("/fast", "plain-1"), receive, send)
    assert (await site.aborts.handle("plain-1").record()).state is TaskState.SUCCESS


def test_a_request_name_is_text_every_store_holds() -> None:
    assert request_name("GET", "/reports/café 1") == "GET /reports/café 1"
    assert request_name("POST", "/a\x00b\n\x7f\x85") == "POST /a%00b%0A%7F%C2%85"
    # A byte that was not UTF-8 (surrogateescape), and a lone surrogate of its own.
    assert request_name("GET", "/s\udced\ud800") == "GET /s%ED%ED%A0%80"
    assert request_name("GET", "/" + "é" * 500) == "GET /" + "é" * 195
    assert request_name("GET", "/" + "\x00" * 100) == "GET /" + "%00" * 65


async def test_a_path_with_lone_surrogates_is_recorded_escaped(site: Site) -> None:
    """Raw ASGI, as from a server that decodes paths with ``surrogateescape``: the request is
    served (a 404 here) and its record named, on every store (SQLite cannot store a lone
    surrogate)."""
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = _http_scope("/s%ED%ED%A0%80%00", "surrogate-1")
    scope["path"] = "/s\udced\ud800\x00"
    await site.api(scope, receive, send)
    record = await site.aborts.handle("surrogate-1").record()
    assert sent[0]["status"] == 404
    assert record.state is TaskState.SUCCESS and record.name == "GET /s%ED%ED%A0%80%00"


async def test_non_http_scopes_pass_through(site: Site) -> None:
    seen: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    middleware = AbortMiddleware(inner, aborts=site.aborts)
    await middleware({"type": "websocket", "path": "/ws"}, None, None)  # type: ignore[arg-type]
    assert seen == ["websocket"]
    with pytest.raises(aioabort.UsageError):
        AbortMiddleware(inner, aborts="not an app")  # type: ignore[arg-type]


async def test_the_documented_dependency_pattern_answers_499(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/examples/fastapi_depends.py, the file docs/web.md shows, run as it is: an aborted
    job answers 499 with its reason (the earlier snippet, with suppress=True, answered 500);
    one left alone answers 200."""
    import importlib

    monkeypatch.setenv("AIOABORT_URL", store_url)
    import docs.examples.fastapi_depends as example

    example = importlib.reload(example)  # its App on this test's store
    async with example.aborts.lifespan(example.api):
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=example.api), base_url="http://t"
        )
        async with client, aioabort.App(store_url) as elsewhere:
            request = asyncio.create_task(client.post("/jobs/dep-1/run"))
            await wait_until(lambda: has_state(elsewhere, "dep-1", TaskState.STARTED))
            assert await elsewhere.handle("dep-1").abort("from the dependency test") is True
            response = await asyncio.wait_for(request, 10)
            done = await client.post("/jobs/dep-2/run", params={"seconds": 0})
        assert response.status_code == 499
        assert response.json()["reason"]["message"] == "from the dependency test"
        assert done.status_code == 200 and done.json() == {"job": "dep-2", "done": "yes"}
        assert (await example.aborts.handle("dep-1").state()) is TaskState.ABORTED


async def test_router_bounds_what_it_reads(site: Site) -> None:
    await site.aborts.create("bounded", name="job")
    async with site.client as client:
        for offset in (10**23, -1):
            answer = await client.get("/aioabort/tasks", params={"offset": offset})
            assert answer.status_code == 400 and answer.json()["error"] == "bad_request"
        big = await client.post(
            "/aioabort/tasks/bounded/abort",
            content=b'{"reason": "' + b"x" * 200_000 + b'"}',
            headers={"content-type": "application/json"},
        )
        assert big.status_code == 413
        assert (await client.get("/aioabort/tasks/bounded")).json()["state"] == "PENDING"
    with pytest.raises(aioabort.UsageError):
        await site.aborts.tasks(offset=10**23)


async def test_an_oversized_abort_body_is_not_read_whole(site: Site) -> None:
    """Raw ASGI with no Content-Length: the route stops reading once past its limit."""
    await site.aborts.create("streamed-body", name="job")
    chunk = b"x" * 65536
    sent = 0
    total = 800  # 50 MiB if it were read whole

    async def receive() -> MutableMapping[str, Any]:
        nonlocal sent
        sent += 1
        return {"type": "http.request", "body": chunk, "more_body": sent < total}

    answer: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        answer.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/aioabort/tasks/streamed-body/abort",
        "raw_path": b"/aioabort/tasks/streamed-body/abort",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    async with site.client:
        await site.api(scope, receive, send)
    assert answer[0]["status"] == 413
    assert sent <= 3
    assert await site.aborts.handle("streamed-body").state() is TaskState.PENDING


async def test_the_abort_route_refuses_cross_site_requests(store_url: str) -> None:
    """CSRF: with a cookie-based authorize, a page of another site cannot abort anything — not
    by a form or text/plain POST (no JSON), not by a JSON POST from its origin; the app's own
    pages, allowed origins and non-browser clients still can."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    aborts = aioabort.App(store_url)
    api = Starlette(
        lifespan=aborts.lifespan,
        routes=[
            Mount(
                "/aioabort",
                router(
                    aborts,
                    authorize=lambda request: request.cookies.get("session") == "ok",
                    allowed_origins=["https://admin.example.com"],
                ),
            )
        ],
    )
    async with aborts.lifespan(api):
        for i in range(6):
            await aborts.create(f"victim-{i}")
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=api),
            base_url="http://testserver",
            cookies={"session": "ok"},
        ) as client:
            evil = {"origin": "https://evil.example"}
            form = await client.post(
                "/aioabort/tasks/victim-0/abort", data={"reason": "x"}, headers=evil
            )
            plain = await client.post(
                "/aioabort/tasks/victim-0/abort",
                content=b'{"reason": "x"}',
                headers={"content-type": "text/plain"},
            )
            cross = await client.post("/aioabort/tasks/victim-0/abort", json={}, headers=evil)
            fetched = await client.post(
                "/aioabort/tasks/victim-0/abort",
                json={},
                headers={"sec-fetch-site": "cross-site"},
            )
            assert [r.status_code for r in (form, plain, cross, fetched)] == [403, 415, 403, 403]
            assert form.json()["error"] == "cross_site" and "evil.example" in form.text
            assert await aborts.handle("victim-0").state() is TaskState.PENDING
            allowed = [
                {"origin": "http://testserver"},
                {"origin": "https://admin.example.com"},
                {"sec-fetch-site": "same-origin"},
                {},  # curl: no Origin, no Sec-Fetch-Site
            ]
            for i, headers in enumerate(allowed, start=1):
                answer = await client.post(
                    f"/aioabort/tasks/victim-{i}/abort", json={}, headers=headers
                )
                assert answer.status_code == 202, (headers, answer.text)


async def test_the_abort_route_creates_an_early_cancel_when_asked(site: Site) -> None:
    """A cancel that arrives before its request: with {"create": true} the id is recorded
    aborted before it started, and the request with that id then answers 499 at once."""
    async with site.client as client:
        unknown = await client.post("/aioabort/tasks/early-1/abort", json={"reason": "go"})
        assert unknown.status_code == 404
        early = await client.post(
            "/aioabort/tasks/early-1/abort", json={"reason": "stop it", "create": True}
        )
        assert early.status_code == 202 and early.json()["aborted"] is True
        bad = await client.post("/aioabort/tasks/early-2/abort", json={"create": "yes"})
        assert bad.status_code == 400
        response = await client.get("/slow", headers={"x-request-id": "early-1"})
    assert response.status_code == 499
    assert response.json()["reason"]["message"] == "stop it"
    assert "early-1" not in site.entered  # the endpoint never ran


#: Malformed bodies of the abort routes, and what the 400's detail says (both routers).
MALFORMED_ABORTS = [
    (b'{"reason": 5}', "reason must be a string, got 5"),
    (b'{"reason": ["stop"]}', "reason must be a string"),
    (b'{"reason": null}', "reason must be a string, got null"),
    (b'{"reason": "x", "create": "yes"}', "create must be true or false"),
    (b'{"reasn": "a typo"}', "unknown field 'reasn'"),
    (b'["stop"]', "must be a JSON object"),
    (b"{not json", "must be JSON"),
    (b"\xff", "must be JSON"),
    (b'{"reason": "' + b"x" * 2001 + b'"}', "at most 2000 characters"),
]
MALFORMED_BULK = [
    (b'{"labels": {"user": "alice"}, "reason": 5}', "reason must be a string, got 5"),
    (b'{"label": {"user": "alice"}}', "unknown field 'label'"),
    (b'{"labels": {"user": "alice"}, "dry_run": "no"}', "dry_run must be true or false"),
    (b'{"labels": {"user": "alice"}, "states": ["NOPE"]}', "NOPE"),
]


async def test_a_malformed_abort_body_is_a_400_and_writes_nothing(site: Site) -> None:
    """A reason that is not a string, an unknown field, a body that is not a JSON object:
    400 naming the problem, never an abort with the default message."""
    await site.aborts.create("target", name="job")
    async with site.client as client:
        for body, detail in MALFORMED_ABORTS:
            answer = await client.post(
                "/aioabort/tasks/target/abort",
                content=body,
                headers={"content-type": "application/json"},
            )
            assert answer.status_code == 400, (body, answer.text)
            assert detail in answer.json()["detail"], (body, answer.text)
        for body, detail in MALFORMED_BULK:
            answer = await client.post(
                "/aioabort/abort", content=body, headers={"content-type": "application/json"}
            )
            assert answer.status_code == 400, (body, answer.text)
            assert detail in answer.json()["detail"], (body, answer.text)
    assert await site.aborts.handle("target").state() is TaskState.PENDING


async def test_a_request_id_naming_a_queued_job_is_refused(site: Site) -> None:
    """DESIGN rule 11: the middleware only creates records."""
    await site.aborts.create("queued-job", name="export")
    async with site.client as client:
        response = await client.get("/fast", headers={"x-request-id": "queued-job"})
    assert response.status_code == 409 and response.json()["error"] == "request_id_in_use"
    record = await site.aborts.handle("queued-job").record()
    assert record.state is TaskState.PENDING and record.name == "export"


async def test_the_router_aborts_by_filter_after_a_preview(site: Site) -> None:
    @site.aborts.task(name="export")
    async def export() -> None: ...

    alice = [await export.apply(labels={"user": "alice"}) for _ in range(3)]
    bob = await export.apply(labels={"user": "bob"})
    async with site.client as client:
        preview = await client.post(
            "/aioabort/abort", json={"labels": {"user": "alice"}, "dry_run": True}
        )
        assert preview.status_code == 200 and preview.json()["count"] == 3
        assert sorted(preview.json()["ids"]) == sorted(h.id for h in alice)
        assert {(await h.record()).state for h in alice} == {TaskState.PENDING}
        done = await client.post(
            "/aioabort/abort", json={"labels": {"user": "alice"}, "reason": "account closed"}
        )
        assert done.status_code == 202
        assert sorted(done.json()["aborted"]) == sorted(preview.json()["ids"])
        empty = await client.post("/aioabort/abort", json={"reason": "everything"})
        assert empty.status_code == 400
        bad = await client.post("/aioabort/abort", json={"labels": {"user": 1}})
        assert bad.status_code == 400
        cross = await client.post(
            "/aioabort/abort",
            json={"labels": {"user": "bob"}},
            headers={"origin": "https://evil.example"},
        )
        assert cross.status_code == 403
    record = await alice[0].record()
    assert record.state is TaskState.ABORTED and record.reason is not None
    assert record.reason.message == "account closed" and record.reason.by is not None
    assert record.reason.by.startswith("web:")
    assert (await bob.record()).state is TaskState.PENDING
