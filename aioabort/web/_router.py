"""The mountable JSON API, Server-Sent Events and dashboard (Starlette).

Every route answers 403 until ``authorize`` allows the request, and goes through the App's
and :class:`~aioabort.AbortHandle`'s methods, never around them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

from .._app import App
from .._errors import MissingDriver
from . import _api

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


def _response(answer: _api.Answer) -> Response:
    if answer.html is not None:
        return HTMLResponse(answer.html, status_code=answer.status)
    return JSONResponse(answer.body, status_code=answer.status)


def _guarded(
    gate: _api.Gate,
    endpoint: Callable[[Request], Awaitable[Response | _api.Answer]],
    *,
    page: bool = False,
) -> Callable[[Request], Awaitable[Response]]:
    """``endpoint`` behind the gate's checks; its :class:`~aioabort.web._api.Answer` written
    as a response (the dashboard's page is refused with a page)."""

    async def wrapper(request: Request) -> Response:
        refused = await gate.check(
            request,
            method=request.method,
            origin=request.headers.get("origin"),
            fetch_site=request.headers.get("sec-fetch-site"),
            own_origin=f"{request.url.scheme}://{request.url.netloc}",
            content_type=request.headers.get("content-type"),
        )
        if refused is not None:
            return _response(_api.refusal_page(refused) if page else refused)
        answer = await _api.guarded(lambda: endpoint(request))
        return answer if isinstance(answer, Response) else _response(answer)

    return wrapper


@dataclass(frozen=True)
class _Endpoints:
    """The router's endpoints: each reads the request into the ``_api`` call it stands for."""

    aborts: App
    who: Callable[[Request], str] | None

    def _by(self, request: Request) -> str:
        if self.who is not None:
            return self.who(request)
        return _api.default_who(request.client.host if request.client else None)

    async def dashboard(self, request: Request) -> _api.Answer:
        return _api.dashboard()

    async def list_tasks(self, request: Request) -> _api.Answer:
        params = request.query_params
        return await _api.list_tasks(
            self.aborts,
            states=params.getlist("state"),
            name=params.get("name"),
            labels=params.getlist("label"),
            id_prefix=params.get("id_prefix"),
            limit=params.get("limit", "50"),
            offset=params.get("offset", "0"),
        )

    async def show(self, request: Request) -> _api.Answer:
        return await _api.show(self.aborts, request.path_params["task_id"])

    async def abort(self, request: Request) -> _api.Answer:
        raw = await _bounded_body(request, _api.MAX_ABORT_BODY)
        task_id = request.path_params["task_id"]
        return await _api.abort(self.aborts, task_id, raw, self._by(request))

    async def abort_matching(self, request: Request) -> _api.Answer:
        raw = await _bounded_body(request, _api.MAX_ABORT_BODY)
        return await _api.abort_matching(self.aborts, raw, self._by(request))

    async def events(self, request: Request) -> Response | _api.Answer:
        stream = await _api.events(self.aborts, request.path_params["task_id"])
        if isinstance(stream, _api.Answer):
            return stream
        return StreamingResponse(
            stream, media_type="text/event-stream", headers=_api.EVENT_STREAM_HEADERS
        )


def router(
    aborts: App,
    *,
    authorize: Authorize | None = None,
    who: Callable[[Request], str] | None = None,
    allowed_origins: Collection[str] = (),
) -> Router:
    """A Starlette router to mount (``api.mount("/aioabort", router(aborts, authorize=...))``).

    ======  =======================  =================================================
    GET     ``/``                    the dashboard (HTML; refused with an HTML page)
    GET     ``/tasks``               a page: ``state`` and ``label=KEY=VALUE``
                                     (repeatable), ``name``, ``id_prefix``, ``limit``,
                                     ``offset``; ``has_more`` says a next page exists
    GET     ``/tasks/{id}``          one record, with its timeline (``events``); 404
    POST    ``/tasks/{id}/abort``    202 (also when already aborting); 404; 409 finished.
                                     ``content-type: application/json``; optional body
                                     ``{"reason": "...", "create": true}`` (400 for
                                     any other field or type)
    GET     ``/tasks/{id}/events``   Server-Sent Events: ``state`` on each change, then
                                     ``end`` once the task is finished
    POST    ``/abort``               every task matching ``{"labels": {...}, "name": ...,
                                     "states": [...]}``; ``"dry_run": true`` previews
    ======  =======================  =================================================

    :param authorize: ``check(request) -> bool`` (or awaitable). With none, every route
        answers 403, so nothing is open by accident.
    :param who: names the person asking, for the abort's ``by`` (default ``web:<client ip>``).
    :param allowed_origins: other origins (``https://admin.example.com``) whose pages may
        abort tasks. Every state-changing route refuses a cross-site request (403,
        ``cross_site``) and a body that is not declared JSON (415): see
        :func:`aioabort.web._api.cross_site`.
    """
    gate = _api.Gate(aborts, authorize, frozenset(allowed_origins))
    routes = _Endpoints(aborts, who)
    return Router(
        routes=[
            Route("/", _guarded(gate, routes.dashboard, page=True), methods=["GET"]),
            Route("/tasks", _guarded(gate, routes.list_tasks), methods=["GET"]),
            Route("/abort", _guarded(gate, routes.abort_matching), methods=["POST"]),
            Route("/tasks/{task_id:path}/abort", _guarded(gate, routes.abort), methods=["POST"]),
            Route("/tasks/{task_id:path}/events", _guarded(gate, routes.events), methods=["GET"]),
            Route("/tasks/{task_id:path}", _guarded(gate, routes.show), methods=["GET"]),
        ]
    )
