"""aioabort for aiohttp servers (extra ``aiohttp``), on par with the ASGI integration.

``setup(app, aborts)`` opens the App with the server (``cleanup_ctx``), stores it under the
typed key :data:`AIOABORT`, and adds :func:`abort_middleware`: each request runs inside
``abortable(request_id)`` and can be aborted from any process. :func:`router` is the same
JSON API, event streams and dashboard as :func:`aioabort.web.router`, as a sub-application:
``app.add_subapp("/aioabort", router(aborts, authorize=...))``. On the client side,
:func:`propagation` makes calls made inside a scope carry it to the service they call
(``setup(..., trust_parent=True)`` there).

On ``handler_cancellation``: since aiohttp 3.7 a handler keeps running when its client
disconnects (``run_app(..., handler_cancellation=True)`` brings the old cancellation back).
aioabort does not depend on either: an abort cancels the handler through its own scope and
is recorded with its reason; with handler_cancellation on, a disconnect cancels the handler
from outside, which the record shows as FAILURE with cause ``cancelled``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace

from ._app import App
from ._errors import MissingDriver
from ._scope import AbortScope
from .web import _api, _requests

try:
    from aiohttp import (
        ClientSession,
        TraceConfig,
        TraceRequestEndParams,
        TraceRequestStartParams,
        web,
    )
    from aiohttp.typedefs import Middleware
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise MissingDriver(
        'aioabort.aiohttp needs aiohttp, which is not installed: pip install "aioabort[aiohttp]"'
    ) from exc

__all__ = ["AIOABORT", "SCOPE", "abort_middleware", "propagation", "router", "setup"]

#: Where :func:`setup` keeps the App: ``request.app[AIOABORT]``.
AIOABORT = web.AppKey("aioabort", App)
#: Where the middleware keeps the request's scope: ``request[SCOPE]``.
SCOPE = web.RequestKey("aioabort_scope", AbortScope)
#: The response a handler began to send (set by the ``on_response_prepare`` hook of setup()).
_STARTED = web.RequestKey("aioabort_started", web.StreamResponse)


async def _note_started(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: remember which response is under way."""
    request[_STARTED] = response


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _response(answer: _api.Answer, headers: Mapping[str, str] | None = None) -> web.Response:
    """An :class:`~aioabort.web._api.Answer` as aiohttp's response."""
    if answer.html is not None:
        return web.Response(
            text=answer.html, content_type="text/html", status=answer.status, headers=headers
        )
    return web.json_response(answer.body, status=answer.status, headers=headers)


#: How often a request's connection is looked at for a disconnect (``abort_on_disconnect``).
DISCONNECT_CHECK = 0.25


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _watch_disconnect(request: web.Request, aborts: App, request_id: str) -> None:
    """Abort the request (code ``disconnect``) once its client is gone. aiohttp tells a
    handler nothing of it (unless ``handler_cancellation``), so the connection is looked at."""
    # aiohttp has no event for it: the connection is looked at.
    while not _client_gone(request):  # noqa: ASYNC110
        await asyncio.sleep(DISCONNECT_CHECK)
    await _requests.client_gone(aborts, request_id)


async def _run_handler(
    handler: Handler, request: web.Request, aborts: App, request_id: str
) -> web.StreamResponse:
    """The handler, for ``abort_on_disconnect``: with ``handler_cancellation`` on, aiohttp
    tells of a disconnect by cancelling the handler; that cancellation becomes the abort it
    stands for, so the record says ABORTED (``disconnect``), not a cancelled FAILURE."""
    watch = asyncio.ensure_future(_watch_disconnect(request, aborts, request_id))
    try:
        return await handler(request)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if not _client_gone(request) or task is None or task.cancelling() != 1:
            raise
        task.uncancel()
        await _requests.client_gone(aborts, request_id)
        await asyncio.sleep(0)  # the scope's own cancellation, the abort's, arrives here
        raise  # pragma: no cover - the line above raises
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch


def _call(request: web.Request, trusted: bool) -> _requests.Call | None:
    """The call between services that the request's headers describe (``trust_parent``)."""
    headers = request.headers
    return _requests.read_call(
        headers.get(_requests.PARENT_HEADER), headers.get(_requests.TIMEOUT_HEADER), trusted=trusted
    )


def abort_middleware(
    aborts: App,
    *,
    header: str = "X-Request-Id",
    status: int = _requests.ABORTED_STATUS,
    exclude: Sequence[str] = (),
    abort_on_disconnect: bool = False,
    trust_parent: bool = False,
) -> Middleware:
    """Run each request inside ``abortable(request_id)`` (id from ``header``, or generated),
    by the same rules as the ASGI :class:`aioabort.web.AbortMiddleware`.

    :param exclude: path prefixes to pass through without a scope (health checks, the
        router's sub-application).
    :param abort_on_disconnect: abort the request (reason code ``disconnect``) when its client
        disconnects before the handler is done.
    :param trust_parent: as the ASGI middleware's: a call from another service's scope is
        its task's child here (off by default: only for services behind your own edge).

    An aborted request is answered ``status`` (499) with
    ``{"error": "aborted", "task_id": ..., "reason": {...}}``; one whose handler had begun a
    streaming response is cut instead (guarantee G12: the connection closes without the final
    chunk) — which needs the response hook that :func:`setup` adds. A request whose id was
    aborted before it came is answered at once: the handler is never called. A request id
    naming a record the request did not create is answered 409. The record's name is the
    method and path.
    """

    prefixes = tuple(exclude)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if prefixes and request.path.startswith(prefixes):
            return await handler(request)
        request_id = _requests.request_id(request.headers.get(header), header)
        if isinstance(request_id, _api.Answer):
            return _response(request_id)
        call = _call(request, trust_parent)

        async def run(scope: AbortScope) -> web.StreamResponse:
            request[SCOPE] = scope
            if abort_on_disconnect:
                return await _run_handler(handler, request, aborts, request_id)
            return await handler(request)

        name = _requests.request_name(request.method, request.path)
        response = await _requests.serve(aborts, request_id, name, run, status=status, call=call)
        if not isinstance(response, _api.Answer):
            if not response.prepared:
                response.headers[header] = request_id
            return response
        if _STARTED in request:
            # A response under way is cut (G12): the connection closes now, without the
            # final chunk, so the client can tell (as under the ASGI middleware).
            if request.transport is not None:
                request.transport.close()
            return request[_STARTED]
        return _response(response, {header: request_id})

    return middleware


def setup(
    app: web.Application,
    aborts: App,
    *,
    middleware: bool = True,
    header: str = "X-Request-Id",
    exclude: Sequence[str] = (),
    abort_on_disconnect: bool = False,
    trust_parent: bool = False,
) -> None:
    """Open ``aborts`` with the aiohttp app, keep it under :data:`AIOABORT`, and (by default)
    add :func:`abort_middleware` (with ``header``, ``exclude``, ``abort_on_disconnect`` and
    ``trust_parent``)."""
    app[AIOABORT] = aborts

    async def lifetime(_: web.Application) -> AsyncIterator[None]:
        opened = not aborts.is_open
        if opened:
            await aborts.open()
        yield
        if opened:
            await aborts.aclose()

    app.cleanup_ctx.append(lifetime)
    app.on_response_prepare.append(_note_started)
    if middleware:
        app.middlewares.append(
            abort_middleware(
                aborts,
                header=header,
                exclude=exclude,
                abort_on_disconnect=abort_on_disconnect,
                trust_parent=trust_parent,
            )
        )


async def _add_call_headers(
    session: ClientSession, context: SimpleNamespace, params: TraceRequestStartParams
) -> None:
    params.headers.update(_requests.call_headers())


async def _answered(
    session: ClientSession, context: SimpleNamespace, params: TraceRequestEndParams
) -> None:
    await _requests.call_answered(params.response.status)


def propagation() -> TraceConfig:
    """An aiohttp client ``TraceConfig`` that makes each request sent inside a scope carry it:
    ``aioabort-parent`` (the scope's task id) and, while a time limit runs,
    ``aioabort-timeout`` (the seconds left of it). Outside a scope it adds nothing. A
    service with ``trust_parent=True`` makes the request a child of that task. A call
    answered 499 because the caller's own task was aborted stops the caller there, before
    its code sees the answer (the called service may hear of the abort first)::

        async with ClientSession(trace_configs=[aioabort.aiohttp.propagation()]) as session:
            async with session.get("http://reports/build") as response:
                ...
    """
    config = TraceConfig()
    config.on_request_start.append(_add_call_headers)
    config.on_request_end.append(_answered)
    return config


# -- the router ------------------------------------------------------------------------------


async def _bounded_body(request: web.Request, limit: int) -> bytes | None:
    """The request's body, or ``None`` once it is over ``limit`` bytes (read no further)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    body = await request.content.read(limit + 1)
    return None if len(body) > limit else body


def _guarded(
    gate: _api.Gate,
    endpoint: Callable[[web.Request], Awaitable[web.StreamResponse | _api.Answer]],
    *,
    page: bool = False,
) -> Handler:
    """``endpoint`` behind the gate's checks; its :class:`~aioabort.web._api.Answer` written
    as a response (the dashboard's page is refused with a page)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        refused = await gate.check(
            request,
            method=request.method,
            origin=request.headers.get("Origin"),
            fetch_site=request.headers.get("Sec-Fetch-Site"),
            own_origin=f"{request.scheme}://{request.host}",
            content_type=request.headers.get("Content-Type"),
        )
        if refused is not None:
            return _response(_api.refusal_page(refused) if page else refused)
        answer = await _api.guarded(lambda: endpoint(request))
        return _response(answer) if isinstance(answer, _api.Answer) else answer

    return handler


@dataclass(frozen=True)
class _Endpoints:
    """The router's endpoints: each reads the request into the ``_api`` call it stands for."""

    aborts: App
    who: Callable[[web.Request], str] | None

    def _by(self, request: web.Request) -> str:
        return self.who(request) if self.who is not None else _api.default_who(request.remote)

    async def dashboard(self, request: web.Request) -> _api.Answer:
        return _api.dashboard()

    async def list_tasks(self, request: web.Request) -> _api.Answer:
        query = request.query
        return await _api.list_tasks(
            self.aborts,
            states=query.getall("state", []),
            name=query.get("name"),
            labels=query.getall("label", []),
            id_prefix=query.get("id_prefix"),
            limit=query.get("limit", "50"),
            offset=query.get("offset", "0"),
        )

    async def abort(self, request: web.Request) -> _api.Answer:
        raw = await _bounded_body(request, _api.MAX_ABORT_BODY)
        return await _api.abort(self.aborts, request.match_info["task_id"], raw, self._by(request))

    async def abort_matching(self, request: web.Request) -> _api.Answer:
        raw = await _bounded_body(request, _api.MAX_ABORT_BODY)
        return await _api.abort_matching(self.aborts, raw, self._by(request))

    async def events(self, request: web.Request) -> web.StreamResponse | _api.Answer:
        stream = await _api.events(self.aborts, request.match_info["task_id"])
        if isinstance(stream, _api.Answer):
            return stream
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", **_api.EVENT_STREAM_HEADERS}
        )
        await response.prepare(request)
        async for text in stream:
            await response.write(text.encode())
        await response.write_eof()
        return response

    async def show(self, request: web.Request) -> _api.Answer:
        return await _api.show(self.aborts, request.match_info["task_id"])


def router(
    aborts: App,
    *,
    authorize: Callable[[web.Request], bool | Awaitable[bool]] | None = None,
    who: Callable[[web.Request], str] | None = None,
    allowed_origins: Collection[str] = (),
) -> web.Application:
    """The JSON API, the event streams and the dashboard of :func:`aioabort.web.router`, with
    the same routes, answers and checks (every route 403 until ``authorize`` allows it;
    cross-site and non-JSON state changes refused), as a sub-application to mount::

        setup(app, aborts, exclude=("/aioabort",))
        app.add_subapp("/aioabort", router(aborts, authorize=is_admin))
    """
    gate = _api.Gate(aborts, authorize, frozenset(allowed_origins))
    routes = _Endpoints(aborts, who)
    sub = web.Application()
    sub.router.add_get("/", _guarded(gate, routes.dashboard, page=True))
    sub.router.add_get("/tasks", _guarded(gate, routes.list_tasks))
    sub.router.add_post("/abort", _guarded(gate, routes.abort_matching))
    sub.router.add_post("/tasks/{task_id:.+}/abort", _guarded(gate, routes.abort))
    sub.router.add_get("/tasks/{task_id:.+}/events", _guarded(gate, routes.events))
    sub.router.add_get("/tasks/{task_id:.+}", _guarded(gate, routes.show))
    return sub
