"""aioabort for ASGI servers: Starlette and FastAPI (extra ``web``).

* :class:`AbortMiddleware` — pure ASGI: each HTTP request runs inside
  ``abortable(request_id)``, so ``await aborts.handle(request_id).abort()`` from *any* server
  instance stops it. The aborted request ends with status 499 and a JSON body naming the reason.
* :func:`router` — a mountable JSON API and HTML dashboard: list, show, abort, and a
  Server-Sent Events stream per task. Every route answers 403 until ``authorize`` allows it.
* ``FastAPI(lifespan=aborts.lifespan)`` opens the App per process; :func:`combine_lifespans`
  composes it with yours; :func:`get_aborts` / :data:`Aborts` are the FastAPI dependency.

Example::

    aborts = aioabort.App("postgresql://app@db/app")
    api = FastAPI(lifespan=aborts.lifespan)
    api.add_middleware(AbortMiddleware, aborts=aborts, header="x-request-id")
    api.mount("/aioabort", router(aborts, authorize=is_admin))
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from importlib import resources
from typing import Annotated, Any

from . import _runtime
from ._app import App
from ._errors import (
    AioabortError,
    MissingDriver,
    ScopeAlreadyEntered,
    TaskAlreadyFinished,
    TaskAlreadyStarted,
    UsageError,
)
from ._scope import AbortScope, abortable
from ._types import MAX_OFFSET, MAX_TASK_ID_LENGTH, AbortReason

try:
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Route, Router
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise MissingDriver(
        'aioabort.web needs Starlette, which is not installed: pip install "aioabort[web]"'
    ) from exc

__all__ = [
    "AbortMiddleware",
    "Aborts",
    "combine_lifespans",
    "get_aborts",
    "request_scope",
    "router",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Request ids the middleware accepts from the header.
_REQUEST_ID_RE = re.compile(rf"[A-Za-z0-9._:@/+=-]{{1,{MAX_TASK_ID_LENGTH}}}")


async def _send_json(
    send: Send, status: int, body: dict[str, Any], headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class AbortMiddleware:
    """Runs every HTTP request inside ``abortable(request_id)``. Pure ASGI; add it outermost.

    The request id comes from ``header`` (letters, digits and ``._:@/+=-``, at most 200
    characters; anything else is answered 400) or is generated; it is echoed back in the
    same response header. The request is abortable from any process:
    ``await aborts.handle(request_id).abort(reason=...)``. An aborted request whose response
    had not started gets ``status_code`` (default 499) and the JSON body
    ``{"error": "aborted", "task_id": ..., "reason": {...}}``; a streaming response that was
    under way simply ends. The body iterator of a streaming response runs inside the scope too.

    :param aborts: the :class:`aioabort.App` (opened by ``lifespan=aborts.lifespan``).
    :param header: the request-id header.
    :param abort_on_disconnect: abort the request (reason code ``disconnect``) when the client
        disconnects before its response is complete. Off by default.
    :param status_code: the status of an aborted request.
    :param exclude: path prefixes to pass through without a scope (health checks...).
    :param lazy_open: open the App on the first request, for servers without lifespan
        support.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        aborts: App,
        header: str = "x-request-id",
        abort_on_disconnect: bool = False,
        status_code: int = 499,
        exclude: Sequence[str] = (),
        lazy_open: bool = False,
    ) -> None:
        if not isinstance(aborts, App):
            raise UsageError("AbortMiddleware needs aborts=aioabort.App(...)")
        self.app = app
        self.aborts = aborts
        self.header = header.lower()
        self._header_bytes = self.header.encode("latin-1")
        self.abort_on_disconnect = abort_on_disconnect
        self.status_code = status_code
        self.exclude = tuple(exclude)
        self.lazy_open = lazy_open
        self._opening = asyncio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.exclude):
            await self.app(scope, receive, send)
            return
        if not self.aborts.is_open:
            if self.lazy_open:
                async with self._opening:
                    if not self.aborts.is_open:
                        await self.aborts.open()
            else:
                await _send_json(
                    send,
                    503,
                    {
                        "error": "aioabort_not_open",
                        "detail": "the aioabort App is not open: use lifespan=aborts.lifespan "
                        "or AbortMiddleware(..., lazy_open=True)",
                    },
                )
                return
        raw = next((v for k, v in scope.get("headers", []) if k == self._header_bytes), None)
        if raw is None:
            request_id = uuid.uuid4().hex
        else:
            request_id = raw.decode("latin-1")
            if not _REQUEST_ID_RE.fullmatch(request_id):
                await _send_json(
                    send,
                    400,
                    {
                        "error": "invalid_request_id",
                        "detail": f"the {self.header} header must be 1-{MAX_TASK_ID_LENGTH} "
                        "letters, digits or ._:@/+=- characters",
                    },
                )
                return
        await self._run(scope, receive, send, request_id)

    async def _run(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        echo = (self._header_bytes, request_id.encode("latin-1"))
        progress = {"started": False, "complete": False}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), echo]}
                progress["started"] = True
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                progress["complete"] = True
            await send(message)

        name = f"{scope.get('method', 'HTTP')} {scope.get('path', '')}"[:200]
        abort_scope = abortable(
            request_id, app=self.aborts, suppress=True, name=name, detached=True
        )
        try:
            async with abort_scope:
                scope.setdefault("state", {})["aioabort_scope"] = abort_scope
                if self.abort_on_disconnect:
                    await self._with_disconnect_watch(
                        scope, receive, send_wrapper, request_id, progress
                    )
                else:
                    await self.app(scope, receive, send_wrapper)
        except (TaskAlreadyFinished, TaskAlreadyStarted, ScopeAlreadyEntered):
            await _send_json(
                send,
                409,
                {
                    "error": "request_id_in_use",
                    "detail": f"the request id {request_id!r} was already used",
                },
                [echo],
            )
            return
        if abort_scope.aborted:
            with contextlib.suppress(OSError):
                if not progress["started"]:
                    await _send_json(
                        send,
                        self.status_code,
                        {
                            "error": "aborted",
                            "task_id": request_id,
                            "reason": None
                            if abort_scope.reason is None
                            else abort_scope.reason.to_dict(),
                        },
                        [echo],
                    )
                elif not progress["complete"]:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _with_disconnect_watch(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        request_id: str,
        progress: dict[str, bool],
    ) -> None:
        # Only one reader may own receive(): a pump reads it and hands messages to the app.
        inbox: asyncio.Queue[Message] = asyncio.Queue()

        async def pump() -> None:
            while True:
                message = await receive()
                inbox.put_nowait(message)
                if message["type"] == "http.disconnect":
                    if not progress["complete"]:  # not the normal end after a response
                        await self.aborts.handle(request_id).abort(
                            AbortReason(
                                AbortReason.DISCONNECT, "the client disconnected", by="aioabort.web"
                            )
                        )
                    return

        pump_task = asyncio.get_running_loop().create_task(pump())
        try:
            await self.app(scope, inbox.get, send)
        finally:
            pump_task.cancel()
            await asyncio.gather(pump_task, return_exceptions=True)


# -- lifespan and dependencies ---------------------------------------------------------------


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


def get_aborts(request: Request) -> App:
    """The request's App: the lifespan state's ``aborts``, else the process's open App."""
    app = getattr(request.state, "aborts", None)
    if isinstance(app, App):
        return app
    found = _runtime.resolve(None)  # raises NoAppOpen with a hint
    assert isinstance(found, App)
    return found


def _aborts_annotation() -> Any:
    try:
        from fastapi import Depends
    except ImportError:  # Starlette without FastAPI: a plain annotation
        return Annotated[App, "aioabort.web.get_aborts"]
    return Annotated[App, Depends(get_aborts)]


#: The FastAPI dependency: ``async def handler(aborts: Aborts): ...`` gets the open App.
Aborts = _aborts_annotation()


def request_scope(request: Request) -> AbortScope:
    """The abort scope :class:`AbortMiddleware` opened for this request.

    As a FastAPI dependency: ``scope: Annotated[AbortScope, Depends(request_scope)]``.
    To open a scope *in a dependency* instead (without the middleware), use a generator
    dependency with ``Depends(..., scope="function")`` so the scope closes before the response
    is sent (see docs/web.md).
    """
    scope = request.scope.get("state", {}).get("aioabort_scope")
    if not isinstance(scope, AbortScope):
        raise UsageError("no aioabort scope on this request: add AbortMiddleware")
    return scope


# -- the router ------------------------------------------------------------------------------

Authorize = Callable[[Request], bool | Awaitable[bool]]


#: The largest body the abort route reads (a reason is at most 2,000 characters).
MAX_ABORT_BODY = 64 * 1024


async def _bounded_body(request: Request, limit: int) -> bytes | None:
    """The request's body, or ``None`` once it is over ``limit`` bytes (read no further)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def router(
    aborts: App,
    *,
    authorize: Authorize | None = None,
    who: Callable[[Request], str] | None = None,
) -> Router:
    """A Starlette router to mount (``api.mount("/aioabort", router(aborts, authorize=...))``).

    ======  =======================  =================================================
    GET     ``/``                    the dashboard (HTML)
    GET     ``/tasks``               list: ``state`` (repeatable), ``name``, ``limit``,
                                     ``offset``
    GET     ``/tasks/{id}``          one record; 404 if unknown
    POST    ``/tasks/{id}/abort``    202 (also when already aborting); 404; 409 finished.
                                     Optional JSON body: ``{"reason": "..."}``
    GET     ``/tasks/{id}/events``   Server-Sent Events: ``state`` on each change, then
                                     ``end`` once the task is finished
    ======  =======================  =================================================

    :param authorize: ``check(request) -> bool`` (or awaitable). With none, every route
        answers 403, so nothing is open by accident.
    :param who: names the person asking, for the abort's ``by`` (default ``web:<client ip>``).
    """

    async def allowed(request: Request) -> Response | None:
        if authorize is None:
            return JSONResponse(
                {
                    "error": "forbidden",
                    "detail": "no authorize hook: router(aborts, authorize=...)",
                },
                status_code=403,
            )
        verdict = authorize(request)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        if not verdict:
            return JSONResponse({"error": "forbidden"}, status_code=403)
        if not aborts.is_open:
            return JSONResponse(
                {"error": "aioabort_not_open", "detail": "use lifespan=aborts.lifespan"},
                status_code=503,
            )
        return None

    def guarded(
        endpoint: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def wrapper(request: Request) -> Response:
            refused = await allowed(request)
            if refused is not None:
                return refused
            try:
                return await endpoint(request)
            except AioabortError as exc:
                return JSONResponse(
                    {"error": type(exc).__name__, "detail": str(exc)},
                    status_code=400 if isinstance(exc, UsageError) else 503,
                )

        return wrapper

    async def list_tasks(request: Request) -> Response:
        params = request.query_params
        states = [
            s.strip().upper()
            for value in params.getlist("state")
            for s in value.split(",")
            if s.strip()
        ]
        try:
            limit = int(params.get("limit", 50))
            offset = int(params.get("offset", 0))
        except ValueError:
            return JSONResponse(
                {"error": "bad_request", "detail": "limit and offset are integers"}, status_code=400
            )
        if not 1 <= limit <= 500 or not 0 <= offset <= MAX_OFFSET:
            return JSONResponse(
                {
                    "error": "bad_request",
                    "detail": f"limit must be within 1..500 and offset within 0..{MAX_OFFSET}",
                },
                status_code=400,
            )
        records = await aborts.tasks(
            states=states or None, name=params.get("name"), limit=limit, offset=offset
        )
        counts = await aborts.counts()
        return JSONResponse(
            {
                "tasks": [r.to_dict() for r in records],
                "limit": limit,
                "offset": offset,
                "counts": {state.value: n for state, n in counts.items()},
            }
        )

    async def show(request: Request) -> Response:
        task_id = request.path_params["task_id"]
        record = await aborts.store.get(aborts.handle(task_id).id)
        if record is None:
            return JSONResponse({"error": "not_found", "task_id": task_id}, status_code=404)
        return JSONResponse(record.to_dict())

    async def abort(request: Request) -> Response:
        task_id = request.path_params["task_id"]
        handle = aborts.handle(task_id)
        message = "aborted from the web"
        raw = await _bounded_body(request, MAX_ABORT_BODY)
        if raw is None:
            return JSONResponse(
                {"error": "too_large", "detail": f"the body is over {MAX_ABORT_BODY} bytes"},
                status_code=413,
            )
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                return JSONResponse(
                    {"error": "bad_request", "detail": "the body must be JSON"}, status_code=400
                )
            if isinstance(body, dict) and isinstance(body.get("reason"), str):
                message = body["reason"]
        by = (
            who(request)
            if who is not None
            else (f"web:{request.client.host}" if request.client else "web")
        )
        recorded = await handle.abort(message, by=by)
        record = await aborts.store.get(handle.id)
        if record is None:
            return JSONResponse({"error": "not_found", "task_id": task_id}, status_code=404)
        if not recorded and record.state.is_terminal:
            return JSONResponse(
                {"error": "already_finished", "task": record.to_dict()}, status_code=409
            )
        return JSONResponse({"aborted": recorded, "task": record.to_dict()}, status_code=202)

    async def events(request: Request) -> Response:
        task_id = request.path_params["task_id"]
        handle = aborts.handle(task_id)
        if await aborts.store.get(handle.id) is None:
            return JSONResponse({"error": "not_found", "task_id": task_id}, status_code=404)

        async def stream() -> AsyncIterator[str]:
            last: dict[str, Any] | None = None
            while aborts.is_open:  # the server shutting down ends the stream
                try:
                    changed = aborts.watcher.change_event()
                    record = await aborts.store.get(handle.id)
                except AioabortError:
                    return
                if record is None:
                    return
                data = record.to_dict()
                if data != last:
                    yield f"event: state\ndata: {json.dumps(data)}\n\n"
                    last = data
                if record.state.is_terminal:
                    yield f"event: end\ndata: {json.dumps({'state': record.state.value})}\n\n"
                    return
                try:
                    await asyncio.wait_for(changed.wait(), 1.0)
                except TimeoutError:
                    yield ": keep-alive\n\n"

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    async def dashboard(request: Request) -> Response:
        html = resources.files("aioabort").joinpath("dashboard.html").read_text("utf-8")
        return HTMLResponse(html)

    return Router(
        routes=[
            Route("/", guarded(dashboard), methods=["GET"]),
            Route("/tasks", guarded(list_tasks), methods=["GET"]),
            Route("/tasks/{task_id:path}/abort", guarded(abort), methods=["POST"]),
            Route("/tasks/{task_id:path}/events", guarded(events), methods=["GET"]),
            Route("/tasks/{task_id:path}", guarded(show), methods=["GET"]),
        ]
    )
