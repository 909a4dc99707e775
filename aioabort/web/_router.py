"""The mountable JSON API, Server-Sent Events and dashboard (Starlette).

Every route answers 403 until ``authorize`` allows the request, and goes through the App's
and :class:`~aioabort.AbortHandle`'s methods, never around them.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from importlib import resources

from .._app import App
from .._errors import AioabortError, MissingDriver, TaskNotFound, UsageError
from .._state import TaskRecord
from .._types import MAX_OFFSET

try:
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Route, Router
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise MissingDriver(
        'aioabort.web.router needs Starlette, which is not installed: pip install "aioabort[web]"'
    ) from exc


# -- the router ------------------------------------------------------------------------------

Authorize = Callable[[Request], bool | Awaitable[bool]]


#: Seconds between keep-alive comments on an idle event stream (they read nothing).
_KEEPALIVE = 1.0

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


def cross_site(request: Request, allowed_origins: Collection[str] = ()) -> str | None:
    """Why a state-changing request must be refused as a cross-site forgery (CSRF), or
    ``None``: a browser's ``Origin`` must be this app's own (scheme, host and port of the
    request) or one of ``allowed_origins``; without an ``Origin``, a ``Sec-Fetch-Site`` must
    say ``same-origin`` (or ``none``: typed by the user). A request with neither is not a
    browser's (curl, another server) and passes; :func:`router` also asks for a JSON body,
    which no form or cross-site ``text/plain`` POST can send without a CORS preflight."""
    origin = request.headers.get("origin")
    if origin is not None:
        own = f"{request.url.scheme}://{request.url.netloc}"
        if origin == own or origin in allowed_origins:
            return None
        return f"the Origin {origin!r} is not this site ({own}) nor an allowed origin"
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site is {fetch_site!r}"
    return None


def _json_content_type(request: Request) -> bool:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return media == "application/json"


def router(
    aborts: App,
    *,
    authorize: Authorize | None = None,
    who: Callable[[Request], str] | None = None,
    allowed_origins: Collection[str] = (),
) -> Router:
    """A Starlette router to mount (``api.mount("/aioabort", router(aborts, authorize=...))``).

    ======  =======================  =================================================
    GET     ``/``                    the dashboard (HTML)
    GET     ``/tasks``               list: ``state`` (repeatable), ``name``, ``limit``,
                                     ``offset``
    GET     ``/tasks/{id}``          one record; 404 if unknown
    POST    ``/tasks/{id}/abort``    202 (also when already aborting); 404; 409 finished.
                                     ``content-type: application/json``; optional body
                                     ``{"reason": "...", "create": true}``
    GET     ``/tasks/{id}/events``   Server-Sent Events: ``state`` on each change, then
                                     ``end`` once the task is finished
    ======  =======================  =================================================

    :param authorize: ``check(request) -> bool`` (or awaitable). With none, every route
        answers 403, so nothing is open by accident.
    :param who: names the person asking, for the abort's ``by`` (default ``web:<client ip>``).
    :param allowed_origins: other origins (``https://admin.example.com``) whose pages may
        abort tasks. Every state-changing route refuses a cross-site request (403,
        ``cross_site``) and a body that is not declared JSON (415): see :func:`cross_site`.
    """
    origins = frozenset(allowed_origins)

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
            if request.method not in ("GET", "HEAD"):  # state-changing: no forgery
                forged = cross_site(request, origins)
                if forged is not None:
                    return JSONResponse({"error": "cross_site", "detail": forged}, status_code=403)
                if not _json_content_type(request):
                    return JSONResponse(
                        {
                            "error": "unsupported_media_type",
                            "detail": "send content-type: application/json",
                        },
                        status_code=415,
                    )
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
        try:
            record = await aborts.handle(task_id).record()
        except TaskNotFound:
            return JSONResponse({"error": "not_found", "task_id": task_id}, status_code=404)
        return JSONResponse(record.to_dict())

    async def abort(request: Request) -> Response:
        task_id = request.path_params["task_id"]
        handle = aborts.handle(task_id)
        message = "aborted from the web"
        create = False
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
            if not isinstance(body, dict):
                return JSONResponse(
                    {"error": "bad_request", "detail": "the body must be a JSON object"},
                    status_code=400,
                )
            if isinstance(body.get("reason"), str):
                message = body["reason"]
            create = body.get("create", False)
            if not isinstance(create, bool):
                return JSONResponse(
                    {"error": "bad_request", "detail": "create must be true or false"},
                    status_code=400,
                )
        by = (
            who(request)
            if who is not None
            else (f"web:{request.client.host}" if request.client else "web")
        )
        recorded = await handle.abort(message, by=by, create=create)
        try:
            record = await handle.record()
        except TaskNotFound:
            return JSONResponse({"error": "not_found", "task_id": task_id}, status_code=404)
        if not recorded and record.state.is_terminal:
            return JSONResponse(
                {"error": "already_finished", "task": record.to_dict()}, status_code=409
            )
        return JSONResponse({"aborted": recorded, "task": record.to_dict()}, status_code=202)

    async def events(request: Request) -> Response:
        task_id = request.path_params["task_id"]
        handle = aborts.handle(task_id)
        try:
            await handle.record()
        except TaskNotFound:
            return JSONResponse({"error": "not_found", "task_id": task_id}, status_code=404)

        async def stream() -> AsyncIterator[str]:
            last: TaskRecord | None = None
            try:
                async with contextlib.aclosing(handle.watch(every=_KEEPALIVE)) as records:
                    async for record in records:
                        if record == last:
                            yield ": keep-alive\n\n"
                            continue
                        last = record
                        yield f"event: state\ndata: {json.dumps(record.to_dict())}\n\n"
                        if record.state.is_terminal:
                            end = json.dumps({"state": record.state.value})
                            yield f"event: end\ndata: {end}\n\n"
            except AioabortError:
                return  # the record is gone, or the App closed with the server

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
