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
  aborts it, reason code ``disconnect``, by :data:`DISCONNECT_BY` (:func:`client_gone`);
* with ``trust_parent``, a call made inside another service's scope (:func:`call_headers`)
  is that task's child here, and the caller's time left is the request's time limit
  (:func:`read_call`; :func:`serve` links it): a bad or untrusted header is ignored, logged
  at debug, never an error, and a parent this store does not hold is never linked; a caller
  answered 499 stops at once if its own task was aborted (:func:`call_answered`).
"""

from __future__ import annotations

import logging
import re
import unicodedata
import uuid
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from .._aborting import catch_up
from .._app import App
from .._errors import (
    ScopeAlreadyEntered,
    TaskAborted,
    TaskAlreadyExists,
    TaskAlreadyFinished,
    TaskAlreadyStarted,
    TaskNotFound,
)
from .._scope import AbortScope, _current_scope
from .._settings import MAX_TIME_LIMIT
from .._types import MAX_TASK_ID_LENGTH, MAX_TASK_NAME_LENGTH, AbortReason
from ._api import Answer

R = TypeVar("R")

logger = logging.getLogger("aioabort.web")

#: Request ids the web integrations accept from a header.
REQUEST_ID_RE = re.compile(rf"[A-Za-z0-9._:@/+=-]{{1,{MAX_TASK_ID_LENGTH}}}")

#: What entering a request's scope raises when its id names a record the request did not
#: create (a queued job's, a finished or running request's): answered 409.
IN_USE = (TaskAlreadyExists, TaskAlreadyFinished, TaskAlreadyStarted, ScopeAlreadyEntered)

#: The ``by`` of an abort for a client's disconnect, under every framework.
DISCONNECT_BY = "aioabort.web"

#: The status of an aborted request, unless the middleware is told another.
ABORTED_STATUS = 499

#: The header naming the task an outgoing call was made in (its caller's task id).
PARENT_HEADER = "aioabort-parent"
#: The header carrying the seconds left of the caller's time limit.
TIMEOUT_HEADER = "aioabort-timeout"
#: The least time left a call announces: a limit about to fire is never sent as none.
MIN_TIMEOUT = 0.001
#: A timeout header's value: plain decimal seconds ("2", "1.875"), no sign, exponent or
#: words ("nan", "inf"), at most 20 characters.
_SECONDS_RE = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,7})?")


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


def _sendable(task_id: str) -> bool:
    """Whether a header carries ``task_id`` as it is: printable ASCII, no outer spaces."""
    return task_id.isascii() and task_id.isprintable() and task_id == task_id.strip()


def call_headers() -> dict[str, str]:
    """The headers of an HTTP call made here. Inside a scope: :data:`PARENT_HEADER`, its task
    id (unless a header cannot carry that id as it is), and, while a time limit runs (its
    own or an enclosing scope's), :data:`TIMEOUT_HEADER`, the seconds left of it. Outside
    any scope: none."""
    scope = _current_scope.get()
    if scope is None:
        return {}
    headers = {PARENT_HEADER: scope.id} if _sendable(scope.id) else {}
    left = scope.time_left()
    if left is not None:
        headers[TIMEOUT_HEADER] = f"{max(left, MIN_TIMEOUT):.3f}"
    return headers


async def call_answered(status: int) -> None:
    """A call made here was answered ``status``. A 499 may be the called service's request
    stopped by this scope's own abort: the store aborts a family in one write, and the callee
    can hear of it before this process does. Then the abort recorded on this scope's task is
    taken in now (one read), so the caller stops here, before its code sees that answer."""
    scope = _current_scope.get()
    if scope is None or status != ABORTED_STATUS:
        return
    await catch_up(scope)  # (no read when its abort already arrived)
    await scope.checkpoint()  # aborted: its cancellation arrives here, at the answer


@dataclass(frozen=True, slots=True)
class Call:
    """What a trusted caller's headers said: the task it called from, its time left."""

    parent: str | None
    timeout: float | None


def _ignored(header: str, raw: str, why: str) -> None:
    logger.debug(
        "%s header ignored: %s",
        header,
        why,
        extra={"action": "call_header_ignored", "header": header, "value": raw[:100]},
    )


def _parent(raw: str | None) -> str | None:
    if raw is None:
        return None
    value = raw.strip()
    if 0 < len(value) <= MAX_TASK_ID_LENGTH and _sendable(value):
        return value
    _ignored(PARENT_HEADER, raw, "not a task id")
    return None


def _seconds(raw: str | None) -> float | None:
    if raw is None:
        return None
    value = raw.strip()
    if _SECONDS_RE.fullmatch(value) and 0 < float(value) < MAX_TIME_LIMIT:
        return float(value)
    _ignored(TIMEOUT_HEADER, raw, "not a positive number of seconds")
    return None


def read_call(parent: str | None, timeout: str | None, *, trusted: bool) -> Call | None:
    """The call a request's :data:`PARENT_HEADER` and :data:`TIMEOUT_HEADER` (their values,
    or ``None``) describe, or ``None`` for none. Only a ``trusted`` client's headers count
    (``trust_parent``): others are ignored. A header that is not a task id, or not a
    positive finite number of seconds under the longest time limit, is ignored on its own.
    Every header ignored is logged at debug, never answered as an error."""
    if parent is None and timeout is None:
        return None
    if not trusted:
        for header, raw in ((PARENT_HEADER, parent), (TIMEOUT_HEADER, timeout)):
            if raw is not None:
                _ignored(header, raw, "trust_parent is off")
        return None
    call = Call(_parent(parent), _seconds(timeout))
    return None if call.parent is None and call.timeout is None else call


#: The Apps that said once that a parent named by a call is not in their store.
_told: weakref.WeakSet[App] = weakref.WeakSet()


async def _linked(aborts: App, parent: str) -> bool:
    """Whether the request may be ``parent``'s child: only a task this store holds is linked
    (a parent on another store, or none, is never written down)."""
    try:
        await aborts.handle(parent).record()
    except TaskNotFound:
        extra = {"action": "call_parent_unknown", "parent": parent}
        if aborts in _told:
            logger.debug("parent %r is not in this store: not linked", parent, extra=extra)
        else:
            _told.add(aborts)
            logger.info(
                "parent %r is not in this store (a caller on another store, or no such task): "
                "the request keeps its caller's time left but is not its child; later ones "
                "are logged at debug",
                parent,
                extra=extra,
            )
        return False
    return True


async def _scope_of(aborts: App, request_id: str, name: str, call: Call | None) -> AbortScope:
    """The request's scope: detached (a request is nobody's child, unless a trusted call
    names its parent) and never adopting (G11); a caller's time left is its time limit."""
    if call is None:
        return AbortScope(request_id, app=aborts, name=name, detached=True, adopt=False)
    parent = call.parent
    linked = parent is not None and await _linked(aborts, parent)
    message = None
    if call.timeout is not None:
        caller = "its caller" if parent is None else f"its caller, task {parent},"
        message = f"the time left by {caller} ran out ({call.timeout:g}s)"
    return AbortScope(
        request_id,
        app=aborts,
        name=name,
        detached=True,
        adopt=False,
        time_limit=call.timeout,
        _parent_id=parent if linked else None,
        _limit_message=message,
    )


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
    call: Call | None = None,
) -> R | Answer:
    """Run ``handler(scope)`` inside the request's scope; return what it returned, or the
    :class:`Answer` the request gets instead: 409 (:func:`in_use`) or, when its abort stopped
    it, ``status`` (:func:`aborted`). The adapter writes that answer unless a response is
    already under way: then it cuts that response (G12).

    The scope is detached (a request is nobody's child, unless ``call`` names a parent this
    store holds) and does not adopt (G11); ``call``'s timeout is its time limit. It is not
    suppressed: an id aborted before the request came raises on entry, so the handler is never
    called (suppressed, it would run up to its first await)."""
    scope = await _scope_of(aborts, request_id, name, call)
    try:
        async with scope:
            if scope.is_aborted():  # born under an aborting parent: the handler never runs
                await scope.checkpoint()  # the scope's own cancellation stops it here
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
