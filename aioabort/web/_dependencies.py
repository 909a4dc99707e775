"""FastAPI/Starlette dependencies: the open App, and the request's scope."""

from __future__ import annotations

from typing import Annotated, Any

from .. import _runtime
from .._app import App
from .._errors import MissingDriver, UsageError
from .._scope import AbortScope

try:
    from starlette.requests import Request
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise MissingDriver(
        'aioabort.web\'s dependencies need Starlette: pip install "aioabort[web]"'
    ) from exc


def get_aborts(request: Request) -> App:
    """The request's App: the lifespan state's ``aborts``, else the process's open App."""
    app = getattr(request.state, "aborts", None)
    if isinstance(app, App):
        return app
    found = _runtime.find()  # raises NoAppOpen with a hint
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
