"""The pure ASGI middleware: each HTTP request runs inside ``abortable(request_id)``.

It imports no web framework: Starlette, FastAPI, Litestar, Django's ASGI handler or raw ASGI
all run it the same way. The request-scope rules live in ``web._requests`` (shared with the
aiohttp middleware); this module reads the ASGI request and writes the answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel

from .._app import App
from .._errors import UsageError
from .._scope import AbortScope
from . import _requests
from ._api import Answer

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
#: Any ASGI application: frameworks type the three arguments each their own way.
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

#: The answer while the App is not open (and the middleware may not open it).
NOT_OPEN = Answer(
    503,
    {
        "error": "aioabort_not_open",
        "detail": "the aioabort App is not open: use lifespan=aborts.lifespan "
        "or AbortMiddleware(..., lazy_open=True)",
    },
)


_PARENT = _requests.PARENT_HEADER.encode()
_TIMEOUT = _requests.TIMEOUT_HEADER.encode()


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The first value of the header ``name`` (lower case), or ``None``."""
    raw = next((v for k, v in headers if k == name), None)
    return None if raw is None else raw.decode("latin-1")


async def _send_json(
    send: Send, answer: Answer, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """Write ``answer`` as a whole JSON response: the one writer of the middleware's answers."""
    payload = json.dumps(answer.body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": answer.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


@dataclass
class _Exchange:
    """One request under way: what the server gave, with a ``send`` that echoes the request
    id, and how far the response got."""

    aborts: App
    request_id: str
    scope: Scope
    receive: Receive
    server_send: Send
    echo: tuple[bytes, bytes]
    started: bool = False
    complete: bool = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), self.echo]}
            self.started = True
        elif message["type"] == "http.response.body" and not message.get("more_body"):
            self.complete = True
        await self.server_send(message)


#: How a request's application runs inside its scope: one of the three modes below.
Mode = Callable[[ASGIApp, AbortScope, _Exchange], Awaitable[None]]


async def _plain(app: ASGIApp, abort_scope: AbortScope, exchange: _Exchange) -> None:
    """The application as it is: an abort cancels it from outside."""
    await app(exchange.scope, exchange.receive, exchange.send)


async def _watch_disconnect(app: ASGIApp, abort_scope: AbortScope, exchange: _Exchange) -> None:
    """``abort_on_disconnect``: only one reader may own ``receive()``, so a pump reads it,
    hands each message to the application and aborts the request at a disconnect that comes
    before its response is complete."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()

    async def pump() -> None:
        while True:
            message = await exchange.receive()
            inbox.put_nowait(message)
            if message["type"] == "http.disconnect":
                await _requests.client_gone(
                    exchange.aborts, exchange.request_id, response_complete=exchange.complete
                )
                return

    pump_task = asyncio.get_running_loop().create_task(pump())
    try:
        await app(exchange.scope, inbox.get, exchange.send)
    finally:
        pump_task.cancel()
        # Shielded: an abort that comes once the application is done must not make the
        # pump's teardown the request's end (a complete answer recorded ABORTED).
        with anyio.CancelScope(shield=True):
            await asyncio.gather(pump_task, return_exceptions=True)


async def _as_disconnect(app: ASGIApp, abort_scope: AbortScope, exchange: _Exchange) -> None:
    """``abort_as_disconnect``: the application runs shielded from the abort; an abort makes
    its ``receive()`` answer ``http.disconnect``, so it stops its own view. Then the abort
    stops the scope, unless the application had answered in full."""
    aborted = asyncio.Event()
    abort_scope.on_abort(lambda reason: aborted.set())

    async def receive_or_abort() -> Message:
        if aborted.is_set():
            return {"type": "http.disconnect"}
        message = asyncio.ensure_future(exchange.receive())
        stop = asyncio.ensure_future(aborted.wait())
        try:
            await asyncio.wait({message, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not message.done():
                message.cancel()
        if message.done() and not message.cancelled():
            return message.result()
        return {"type": "http.disconnect"}

    with anyio.CancelScope(shield=True):
        await app(exchange.scope, receive_or_abort, exchange.send)
    if not exchange.complete:
        # An abort that came stops the scope here. An application that answered in full
        # did its work: the abort came too late, the request ended SUCCESS.
        await anyio.lowlevel.checkpoint()


class AbortMiddleware:
    """Runs every HTTP request inside ``abortable(request_id)``. Pure ASGI; add it outermost.

    The request id comes from ``header`` (letters, digits and ``._:@/+=-``, at most 200
    characters; anything else is answered 400) or is generated; it is echoed back in the
    same response header. The request is abortable from any process:
    ``await aborts.handle(request_id).abort(reason=...)``. An aborted request whose response
    had not started gets ``status_code`` (default 499) and the JSON body
    ``{"error": "aborted", "task_id": ..., "reason": {...}}``; a streaming response that was
    under way is cut (guarantee G12): it is never completed, so the server closes the
    connection without the final chunk (uvicorn logs "ASGI callable returned without
    completing response") and the client sees an incomplete body, never a complete one. The
    body iterator of a streaming response runs inside the scope too. A request whose id was
    aborted before it came (``abort(..., create=True)``) gets ``status_code`` at once: the
    application is never called. A request id naming a record the request did not create is
    answered 409. The record's name is the method and path.

    :param aborts: the :class:`aioabort.App` (opened by ``lifespan=aborts.lifespan``).
    :param header: the request-id header.
    :param abort_on_disconnect: abort the request (reason code ``disconnect``) when the client
        disconnects before its response is complete. Off by default.
    :param status_code: the status of an aborted request.
    :param exclude: path prefixes to pass through without a scope (health checks...).
    :param lazy_open: open the App on the first request, for servers without lifespan
        support.
    :param abort_as_disconnect: deliver an abort to the application as the client's
        disconnect (its ``receive()`` answers ``http.disconnect``) instead of cancelling it
        from outside: for frameworks that run the view in a task of their own and cancel it
        on a disconnect — Django's ASGI handler. The scope records ABORTED all the same,
        unless the application still answered in full (then SUCCESS, the abort kept).
    :param trust_parent: take in the ``aioabort-parent`` and ``aioabort-timeout`` headers of
        a call made inside another service's scope (``aioabort.httpx.propagate``,
        ``aioabort.aiohttp.propagation()``): the request becomes the child of that task when
        this store holds it (aborting the caller stops it: 499, the reason naming the
        parent), and the caller's time left becomes its time limit (code ``timeout``). Off by
        default: turn it on only for services that only your own services can reach. Bad
        headers are ignored (logged at debug), never an error.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        aborts: App,
        header: str = "x-request-id",
        abort_on_disconnect: bool = False,
        status_code: int = _requests.ABORTED_STATUS,
        exclude: Sequence[str] = (),
        lazy_open: bool = False,
        abort_as_disconnect: bool = False,
        trust_parent: bool = False,
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
        self.abort_as_disconnect = abort_as_disconnect
        self.trust_parent = trust_parent
        self._mode: Mode = (
            _as_disconnect
            if abort_as_disconnect
            else _watch_disconnect
            if abort_on_disconnect
            else _plain
        )
        self._opening = asyncio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.exclude):
            await self.app(scope, receive, send)
            return
        if not self.aborts.is_open:
            if not self.lazy_open:
                await _send_json(send, NOT_OPEN)
                return
            async with self._opening:
                if not self.aborts.is_open:
                    await self.aborts.open()
        headers = scope.get("headers", [])
        request_id = _requests.request_id(_header(headers, self._header_bytes), self.header)
        if isinstance(request_id, Answer):
            await _send_json(send, request_id)
            return
        call = _requests.read_call(
            _header(headers, _PARENT), _header(headers, _TIMEOUT), trusted=self.trust_parent
        )
        await self._run(scope, receive, send, request_id, call)

    async def _run(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        request_id: str,
        call: _requests.Call | None,
    ) -> None:
        exchange = _Exchange(
            self.aborts, request_id, scope, receive, send, (self._header_bytes, request_id.encode())
        )

        async def run(abort_scope: AbortScope) -> None:
            scope.setdefault("state", {})["aioabort_scope"] = abort_scope
            await self._mode(self.app, abort_scope, exchange)

        name = _requests.request_name(scope.get("method", "HTTP"), scope.get("path", ""))
        answer = await _requests.serve(
            self.aborts, request_id, name, run, status=self.status_code, call=call
        )
        if answer is None:
            return  # the application answered
        if exchange.started:
            # A response under way is left incomplete (G12): the server closes the connection
            # without the final chunk, so the client can tell it was cut.
            return
        with contextlib.suppress(OSError):
            await _send_json(send, answer, [exchange.echo])
