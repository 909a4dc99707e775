"""A request's scope, written once for every web framework: the ASGI middleware
(``web._middleware``) and the aiohttp one (``aioabort.aiohttp``) read the request into these
functions' arguments and write the :class:`~aioabort.web._api.Answer` they get back; neither
decides anything of its own. It imports no framework.

The rules, in the order a request meets them:

* the request id comes from a header (:func:`request_id`): a valid one is kept, none is
  generated, anything else is answered 400;
* the request runs as the task of that id (:func:`serve`), named after its method and path
  (:func:`request_name`), with ``adopt=False``: a client's id never adopts someone else's
  record (guarantee G11 in docs/semantics.md) — one that names an existing record is answered
  409 and writes nothing, one aborted before the request came is answered 499 at once;
* an aborted request is answered 499 with ``{"error": "aborted", "task_id", "reason"}``
  (:func:`aborted`), unless its response had begun: then it is cut, never completed (G12);
* with ``abort_on_disconnect``, a client that goes away before its response is complete
  aborts it, reason code ``disconnect``, by :data:`DISCONNECT_BY` (:func:`client_gone`).
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .._abortable import abortable
from .._app import App
from .._errors import (
    ScopeAlreadyEntered,
    TaskAborted,
    TaskAlreadyExists,
    TaskAlreadyFinished,
    TaskAlreadyStarted,
)
from .._scope import AbortScope
from .._types import MAX_TASK_ID_LENGTH, MAX_TASK_NAME_LENGTH, AbortReason
from ._api import Answer

R = TypeVar("R")

#: Request ids the web integrations accept from a header.
REQUEST_ID_RE = re.compile(rf"[A-Za-z0-9._:@/+=-]{{1,{MAX_TASK_ID_LENGTH}}}")

#: What entering a request's scope raises when its id names a record the request did not
#: create (a queued job's, a finished or running request's): answered 409.
IN_USE = (TaskAlreadyExists, TaskAlreadyFinished, TaskAlreadyStarted, ScopeAlreadyEntered)

#: The ``by`` of an abort for a client's disconnect, under every framework.
DISCONNECT_BY = "aioabort.web"

#: The status of an aborted request, unless the middleware is told another.
ABORTED_STATUS = 499


def request_id(raw: str | None, header: str) -> str | Answer:
    """The request's id: ``raw`` (the ``header``'s value) when it is 1-200 letters, digits or
    ``._:@/+=-``; a new one when there is none; else the 400 to answer (nothing is written)."""
    if raw is None:
        return uuid.uuid4().hex
    if REQUEST_ID_RE.fullmatch(raw):
        return raw
    return Answer(
        400,
        {
            "error": "invalid_request_id",
            "detail": f"the {header.lower()} header must be 1-{MAX_TASK_ID_LENGTH} "
            "letters, digits or ._:@/+=- characters",
        },
    )


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


def in_use(request_id: str) -> Answer:
    """The 409 of a request whose id names a record it did not create."""
    return Answer(
        409,
        {"error": "request_id_in_use", "detail": f"the request id {request_id!r} was already used"},
    )


def aborted(scope: AbortScope, status: int = ABORTED_STATUS) -> Answer:
    """The answer of a request stopped by its abort, before its response began."""
    reason = scope.reason
    return Answer(
        status,
        {
            "error": "aborted",
            "task_id": scope.id,
            "reason": None if reason is None else reason.to_dict(),
        },
    )


async def serve(
    aborts: App,
    request_id: str,
    name: str,
    handler: Callable[[AbortScope], Awaitable[R]],
    *,
    status: int = ABORTED_STATUS,
) -> R | Answer:
    """Run ``handler(scope)`` inside the request's scope; return what it returned, or the
    :class:`Answer` the request gets instead: 409 (:func:`in_use`) or, when its abort stopped
    it, ``status`` (:func:`aborted`). The adapter writes that answer unless a response is
    already under way: then it cuts that response (G12).

    The scope is detached (a request is nobody's child) and does not adopt (G11). It is not
    suppressed: an id aborted before the request came raises on entry, so the handler is never
    called (suppressed, it would run up to its first await)."""
    scope = abortable(request_id, app=aborts, name=name, detached=True, adopt=False)
    try:
        async with scope:
            return await handler(scope)
    except IN_USE:
        return in_use(request_id)
    except TaskAborted:
        if not scope.aborted:
            raise  # another scope's, not this request's
    return aborted(scope, status)


def disconnected() -> AbortReason:
    """The reason of an abort for a client that went away."""
    return AbortReason(AbortReason.DISCONNECT, "the client disconnected", by=DISCONNECT_BY)


async def client_gone(aborts: App, request_id: str, *, response_complete: bool = False) -> None:
    """A request's client went away (``abort_on_disconnect``): abort the request, unless its
    response was complete — servers report a disconnect after every finished response too,
    and that one is the normal end, never an abort."""
    if not response_complete:
        await aborts.handle(request_id).abort(disconnected())
