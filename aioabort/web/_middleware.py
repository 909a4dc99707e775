"""The pure ASGI middleware: each HTTP request runs inside ``abortable(request_id)``.

It imports no web framework: Starlette, FastAPI, Litestar, Django's ASGI handler or raw ASGI
all run it the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import unicodedata
import uuid
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import anyio
import anyio.lowlevel

from .._app import App
from .._errors import (
    ScopeAlreadyEntered,
    TaskAborted,
    TaskAlreadyExists,
    TaskAlreadyFinished,
    TaskAlreadyStarted,
    UsageError,
)
from .._scope import AbortScope, abortable
from .._types import MAX_TASK_ID_LENGTH, MAX_TASK_NAME_LENGTH, AbortReason

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
#: Any ASGI application: frameworks type the three arguments each their own way.
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

#: Request ids the web integrations accept from a header.
REQUEST_ID_RE = re.compile(rf"[A-Za-z0-9._:@/+=-]{{1,{MAX_TASK_ID_LENGTH}}}")


def _escape(char: str) -> str:
    """A character as the percent-escapes of its bytes (a lone surrogate in U+DC80..U+DCFF
    stands for a byte that was not UTF-8, as ``surrogateescape`` decodes it)."""
    errors = "surrogateescape" if "\udc80" <= char <= "\udcff" else "surrogatepass"
    return "".join(f"%{byte:02X}" for byte in char.encode("utf-8", errors))


def request_name(method: str, path: str) -> str:
    """The name of a request's record, ``"GET /path"``, in a form every store holds: NUL and
    the other control characters, and lone surrogates (text PostgreSQL or SQLite cannot
    store), are percent-escaped as a client sends them; the name is cut to
    :data:`~aioabort._types.MAX_TASK_NAME_LENGTH` characters, never inside an escape."""
    pieces: list[str] = []
    size = 0
    for char in f"{method} {path}":
        piece = _escape(char) if unicodedata.category(char) in ("Cc", "Cs") else char
        size += len(piece)
        if size > MAX_TASK_NAME_LENGTH:
            break
        pieces.append(piece)
    return "".join(pieces)


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
    under way is cut (DESIGN rule 12): it is never completed, so the server closes the
    connection without the final chunk (uvicorn logs "ASGI callable returned without
    completing response") and the client sees an incomplete body, never a complete one. The
    body iterator of a streaming response runs inside the scope too. A request whose id was
    aborted before it came (``abort(..., create=True)``) gets ``status_code`` at once: the
    application is never called. The record's name is the method and path
    (:func:`request_name`).

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
        on a disconnect — Django's ASGI handler. The scope records ABORTED all the same.
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
        abort_as_disconnect: bool = False,
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
            if not REQUEST_ID_RE.fullmatch(request_id):
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

        name = request_name(scope.get("method", "HTTP"), scope.get("path", ""))
        # adopt=False (DESIGN rule 11): a client's id never starts a record it did not create.
        # Not suppressed: an id aborted before the request came raises on entry, before the
        # application is called (suppressed, it would run up to its first await).
        abort_scope = abortable(request_id, app=self.aborts, name=name, detached=True, adopt=False)
        try:
            async with abort_scope:
                scope.setdefault("state", {})["aioabort_scope"] = abort_scope
                if self.abort_as_disconnect:
                    await self._as_disconnect(abort_scope, scope, receive, send_wrapper)
                elif self.abort_on_disconnect:
                    await self._with_disconnect_watch(
                        scope, receive, send_wrapper, request_id, progress
                    )
                else:
                    await self.app(scope, receive, send_wrapper)
        except (TaskAlreadyExists, TaskAlreadyFinished, TaskAlreadyStarted, ScopeAlreadyEntered):
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
        except TaskAborted:
            if not abort_scope.aborted:
                raise  # another scope's, not this request's
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
                # A response under way is left incomplete (DESIGN rule 12): the server closes
                # the connection without the final chunk, so the client can tell it was cut.

    async def _as_disconnect(
        self, abort_scope: AbortScope, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Run the application shielded from the abort; an abort makes its ``receive()``
        answer ``http.disconnect``, so it stops its own view. Then the abort stops the scope."""
        aborted = asyncio.Event()
        abort_scope.on_abort(lambda reason: aborted.set())

        async def receive_or_abort() -> Message:
            if aborted.is_set():
                return {"type": "http.disconnect"}
            message = asyncio.ensure_future(receive())
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
            await self.app(scope, receive_or_abort, send)
        await anyio.lowlevel.checkpoint()  # an abort that came stops the scope here

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
