"""The router's rules, written once for every framework (Starlette in ``_router``, aiohttp in
``aioabort.aiohttp``): who may call it, what each route answers, the event stream. A framework
adapter reads the request into these functions' arguments and turns an :class:`Answer` into
its own response; it imports no framework here.
"""

from __future__ import annotations

import contextlib
import html
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, TypeVar

from .._app import App
from .._errors import AioabortError, TaskNotFound, UsageError
from .._state import TaskRecord, abort_verdict
from .._types import MAX_OFFSET, AbortReason, parse_labels

R = TypeVar("R")

#: Seconds between keep-alive comments on an idle event stream (they read nothing).
KEEPALIVE = 1.0

#: The largest body the abort route reads (a reason is at most 2,000 characters).
MAX_ABORT_BODY = 64 * 1024

#: Headers of an event stream.
EVENT_STREAM_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


@dataclass(frozen=True)
class Answer:
    """A response: a status and a JSON body (or the dashboard's HTML)."""

    status: int
    body: dict[str, Any] = field(default_factory=dict)
    html: str | None = None


def record_json(aborts: App, record: TaskRecord) -> dict[str, Any]:
    """A record as the router answers it: :meth:`TaskRecord.to_dict` and
    ``ignoring_abort_for``, the seconds it has ignored its abort (guarantee G16), or null."""
    seconds = record.ignoring_abort(aborts.ignored_abort_after)
    return {
        **record.to_dict(),
        "ignoring_abort_for": None if seconds is None else round(seconds, 1),
    }


def _bad(detail: str) -> Answer:
    return Answer(400, {"error": "bad_request", "detail": detail})


def _json_object(raw: bytes, fields: Sequence[str]) -> dict[str, Any] | Answer:
    """A request body: a JSON object of ``fields`` (each optional; empty is ``{}``), or 400."""
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        return _bad("the body must be JSON")
    if not isinstance(body, dict):
        return _bad("the body must be a JSON object")
    unknown = [key for key in body if key not in fields]
    if unknown:
        return _bad(f"unknown field {unknown[0]!r}: the body may hold {', '.join(fields)}")
    return body


def _not(what: str, value: object) -> Answer:
    return _bad(f"{what}, got {json.dumps(value)[:100]}")


def cross_site(
    origin: str | None,
    fetch_site: str | None,
    own_origin: str,
    allowed_origins: Collection[str] = (),
) -> str | None:
    """Why a state-changing request must be refused as a cross-site forgery (CSRF), or
    ``None``: a browser's ``Origin`` must be this app's own (``own_origin``: the scheme, host
    and port the request came to) or one of ``allowed_origins``; without an ``Origin``, a
    ``Sec-Fetch-Site`` must say ``same-origin`` (or ``none``: typed by the user). A request
    with neither is not a browser's (curl, another server) and passes; the router also asks
    for a JSON body, which no form or cross-site ``text/plain`` POST can send without a CORS
    preflight."""
    if origin is not None:
        if origin == own_origin or origin in allowed_origins:
            return None
        return f"the Origin {origin!r} is not this site ({own_origin}) nor an allowed origin"
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site is {fetch_site!r}"
    return None


def is_json(content_type: str | None) -> bool:
    return (content_type or "").split(";", 1)[0].strip().lower() == "application/json"


Authorize = Callable[[Any], bool | Awaitable[bool]]


@dataclass(frozen=True)
class Gate:
    """What every route checks first, in this order: ``authorize`` (403 until it allows the
    request; with no hook, always), the App being open (503), and for state-changing
    methods no forgery (403 ``cross_site``) and a JSON body (415)."""

    aborts: App
    authorize: Authorize | None
    allowed_origins: frozenset[str]

    async def check(
        self,
        request: Any,
        *,
        method: str,
        origin: str | None,
        fetch_site: str | None,
        own_origin: str,
        content_type: str | None,
    ) -> Answer | None:
        if self.authorize is None:
            return Answer(
                403,
                {
                    "error": "forbidden",
                    "detail": "no authorize hook: router(aborts, authorize=...)",
                },
            )
        verdict = self.authorize(request)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        if not verdict:
            return Answer(403, {"error": "forbidden"})
        if not self.aborts.is_open:
            return Answer(
                503, {"error": "aioabort_not_open", "detail": "use lifespan=aborts.lifespan"}
            )
        if method not in ("GET", "HEAD"):
            forged = cross_site(origin, fetch_site, own_origin, self.allowed_origins)
            if forged is not None:
                return Answer(403, {"error": "cross_site", "detail": forged})
            if not is_json(content_type):
                return Answer(
                    415,
                    {
                        "error": "unsupported_media_type",
                        "detail": "send content-type: application/json",
                    },
                )
        return None


async def guarded(run: Callable[[], Awaitable[R]]) -> R | Answer:
    """Run a route; an aioabort error becomes 400 (bad input) or 503 (the store)."""
    try:
        return await run()
    except AioabortError as exc:
        return Answer(
            400 if isinstance(exc, UsageError) else 503,
            {"error": type(exc).__name__, "detail": str(exc)},
        )


async def list_tasks(
    aborts: App,
    *,
    states: list[str],
    name: str | None,
    limit: str,
    offset: str,
    labels: Sequence[str] = (),
    id_prefix: str | None = None,
) -> Answer:
    """A page of records, newest first, with the counts of every state. ``has_more``: a
    next page exists (one more record is read to know, never a count of the filter)."""
    wanted = [s.strip().upper() for value in states for s in value.split(",") if s.strip()]
    try:
        count, skip = int(limit), int(offset)
    except ValueError:
        return _bad("limit and offset are integers")
    if not 1 <= count <= 500 or not 0 <= skip <= MAX_OFFSET:
        return _bad(f"limit must be within 1..500 and offset within 0..{MAX_OFFSET}")
    try:
        wanted_labels = parse_labels(labels)
    except UsageError as exc:
        return _bad(str(exc))
    records = await aborts.tasks(
        states=wanted or None,
        name=name or None,
        labels=wanted_labels or None,
        id_prefix=id_prefix or None,
        limit=count + 1,
        offset=skip,
    )
    counts = await aborts.counts()
    return Answer(
        200,
        {
            "tasks": [record_json(aborts, r) for r in records[:count]],
            "limit": count,
            "offset": skip,
            "has_more": len(records) > count,
            "counts": {state.value: n for state, n in counts.items()},
        },
    )


async def show(aborts: App, task_id: str) -> Answer:
    """One record, with its timeline (``events``: oldest first)."""
    handle = aborts.handle(task_id)
    try:
        record, events = await handle.record(), await handle.events()
    except TaskNotFound:
        return Answer(404, {"error": "not_found", "task_id": task_id})
    return Answer(200, {**record_json(aborts, record), "events": [e.to_dict() for e in events]})


async def abort(aborts: App, task_id: str, raw: bytes | None, by: str) -> Answer:
    """``raw``: the body, or ``None`` when it was over :data:`MAX_ABORT_BODY` bytes."""
    if raw is None:
        return Answer(
            413, {"error": "too_large", "detail": f"the body is over {MAX_ABORT_BODY} bytes"}
        )
    body = _json_object(raw, ("reason", "create"))
    if isinstance(body, Answer):
        return body
    message, create = body.get("reason", "aborted from the web"), body.get("create", False)
    if not isinstance(message, str):
        return _not("reason must be a string", message)
    if not isinstance(create, bool):
        return _not("create must be true or false", create)
    handle = aborts.handle(task_id)
    recorded = await handle.abort(message, by=by, create=create)
    try:
        record: TaskRecord | None = await handle.record()
    except TaskNotFound:
        record = None
    verdict = abort_verdict(recorded, None if record is None else record.state)
    if record is None:
        return Answer(404, {"error": verdict, "task_id": task_id})
    if verdict == "already_finished":
        return Answer(409, {"error": verdict, "task": record_json(aborts, record)})
    return Answer(202, {"aborted": recorded, "task": record_json(aborts, record)})


async def abort_matching(aborts: App, raw: bytes | None, by: str) -> Answer:
    """``POST /abort``: every task matching ``{"labels": {...}, "name": ..., "states": [...]}``,
    as :meth:`App.abort_many`. ``"dry_run": true`` (the preview) changes nothing: 200 with the
    ids that would be aborted; otherwise 202 with the ids aborted."""
    if raw is None:
        return Answer(
            413, {"error": "too_large", "detail": f"the body is over {MAX_ABORT_BODY} bytes"}
        )
    body = _json_object(raw, ("labels", "name", "states", "reason", "dry_run"))
    if isinstance(body, Answer):
        return body
    labels, name, states = body.get("labels"), body.get("name"), body.get("states")
    dry_run, message = body.get("dry_run", False), body.get("reason", "aborted from the web")
    if labels is not None and not isinstance(labels, dict):
        return _not("labels must be an object of strings", labels)
    if name is not None and not isinstance(name, str):
        return _not("name must be a string", name)
    if states is not None and not (
        isinstance(states, list) and all(isinstance(s, str) for s in states)
    ):
        return _not("states must be a list of state names", states)
    if not isinstance(dry_run, bool):
        return _not("dry_run must be true or false", dry_run)
    if not isinstance(message, str):
        return _not("reason must be a string", message)
    if not labels and name is None:
        return _bad("give labels or a name: the filter may not be empty")
    ids = await aborts.abort_many(
        reason=AbortReason(AbortReason.USER, message, by=by),
        labels=labels,
        name=name,
        states=[s.upper() for s in states] if states else None,
        dry_run=dry_run,
    )
    if dry_run:
        return Answer(200, {"dry_run": True, "count": len(ids), "ids": ids})
    return Answer(202, {"dry_run": False, "count": len(ids), "aborted": ids})


async def events(aborts: App, task_id: str) -> Answer | AsyncIterator[str]:
    """404, or the Server-Sent Events of the task: ``state`` on each change, ``end`` once it
    is finished, a keep-alive comment each :data:`KEEPALIVE` seconds (reading nothing)."""
    handle = aborts.handle(task_id)
    try:
        await handle.record()
    except TaskNotFound:
        return Answer(404, {"error": "not_found", "task_id": task_id})

    async def stream() -> AsyncIterator[str]:
        last: TaskRecord | None = None
        try:
            async with contextlib.aclosing(handle.watch(every=KEEPALIVE)) as records:
                async for record in records:
                    if record == last:
                        yield ": keep-alive\n\n"
                        continue
                    last = record
                    data = json.dumps(record_json(aborts, record))
                    yield f"event: state\ndata: {data}\n\n"
                    if record.state.is_terminal:
                        end = json.dumps({"state": record.state.value})
                        yield f"event: end\ndata: {end}\n\n"
        except AioabortError:
            return  # the record is gone, or the App closed with the server

    return stream()


_REFUSED = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>aioabort: {title}</title>
<style>body {{ font:16px/1.5 system-ui, sans-serif; color:#1d2430; max-width:40rem;
margin:4rem auto; padding:0 1rem; overflow-wrap:anywhere; }}</style>
</head>
<body>
<h1>{title}</h1>
<p>{detail}</p>
</body>
</html>
"""


def refusal_page(refused: Answer) -> Answer:
    """A refusal of the dashboard's page as a small HTML page, with the same status."""
    title, detail = {
        403: ("Access denied", "The authorize hook refused this request."),
        503: ("Not open", "The aioabort App of this server is not open."),
    }.get(refused.status, (f"Refused ({refused.status})", ""))
    detail = str(refused.body.get("detail") or detail)
    page = _REFUSED.format(title=title, detail=html.escape(detail))
    return Answer(refused.status, refused.body, html=page)


def dashboard() -> Answer:
    page = resources.files("aioabort").joinpath("dashboard.html").read_text("utf-8")
    return Answer(200, html=page)


def default_who(client_host: str | None) -> str:
    return f"web:{client_host}" if client_host else "web"
