"""aioabort for aiohttp servers (extra ``aiohttp``).

``setup(app, aborts)`` opens the App with the server (``cleanup_ctx``), stores it under the
typed key :data:`AIOABORT`, and adds :func:`abort_middleware`: each request runs inside
``abortable(request_id)`` and can be aborted from any process.

On ``handler_cancellation``: since aiohttp 3.7 a handler keeps running when its client
disconnects (``run_app(..., handler_cancellation=True)`` brings the old cancellation back).
aioabort does not depend on either: an abort cancels the handler through its own scope and
is recorded with its reason; with handler_cancellation on, a disconnect cancels the handler
from outside, which the record shows as FAILURE with cause ``cancelled``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from ._app import App
from ._errors import (
    MissingDriver,
    ScopeAlreadyEntered,
    TaskAlreadyExists,
    TaskAlreadyFinished,
    TaskAlreadyStarted,
)
from ._scope import AbortScope, abortable
from ._types import MAX_TASK_ID_LENGTH
from .web._middleware import REQUEST_ID_RE

try:
    from aiohttp import web
    from aiohttp.typedefs import Middleware
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise MissingDriver(
        'aioabort.aiohttp needs aiohttp, which is not installed: pip install "aioabort[aiohttp]"'
    ) from exc

__all__ = ["AIOABORT", "SCOPE", "abort_middleware", "setup"]

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


def abort_middleware(aborts: App, *, header: str = "X-Request-Id", status: int = 499) -> Middleware:
    """Run each request inside ``abortable(request_id)`` (id from ``header``, or generated).

    An aborted request is answered ``status`` (499) with
    ``{"error": "aborted", "task_id": ..., "reason": {...}}``; one whose handler had begun a
    streaming response is cut instead (DESIGN rule 12: the connection closes without the final
    chunk) — which needs the response hook that :func:`setup` adds.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id = request.headers.get(header)
        if request_id is None:
            request_id = uuid.uuid4().hex
        elif not REQUEST_ID_RE.fullmatch(request_id):
            return web.json_response(
                {
                    "error": "invalid_request_id",
                    "detail": f"the {header} header must be 1-{MAX_TASK_ID_LENGTH} letters, "
                    "digits or ._:@/+=- characters",
                },
                status=400,
            )
        scope = abortable(
            request_id,
            app=aborts,
            suppress=True,
            name=f"{request.method} {request.path}"[:200],
            detached=True,
            adopt=False,  # DESIGN rule 11: a client's id never starts a queued job
        )
        try:
            async with scope:
                request[SCOPE] = scope
                response = await handler(request)
        except (TaskAlreadyExists, TaskAlreadyFinished, TaskAlreadyStarted, ScopeAlreadyEntered):
            return web.json_response(
                {"error": "request_id_in_use", "detail": f"{request_id!r} was already used"},
                status=409,
                headers={header: request_id},
            )
        if scope.aborted and _STARTED in request:
            # A response under way is cut (DESIGN rule 12): the connection closes now, without
            # the final chunk, so the client can tell (as under the ASGI middleware).
            if request.transport is not None:
                request.transport.close()
            return request[_STARTED]
        if scope.aborted:
            reason = scope.reason
            return web.json_response(
                {
                    "error": "aborted",
                    "task_id": request_id,
                    "reason": None if reason is None else reason.to_dict(),
                },
                status=status,
                headers={header: request_id},
            )
        if not response.prepared:
            response.headers[header] = request_id
        return response

    return middleware


def setup(
    app: web.Application, aborts: App, *, middleware: bool = True, header: str = "X-Request-Id"
) -> None:
    """Open ``aborts`` with the aiohttp app, keep it under :data:`AIOABORT`, and (by default)
    add :func:`abort_middleware`."""
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
        app.middlewares.append(abort_middleware(aborts, header=header))
