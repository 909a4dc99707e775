"""aioabort for ASGI servers: any ASGI framework for the middleware; Starlette and FastAPI
(extra ``web``) for the router and the dependencies.

* :class:`AbortMiddleware` — pure ASGI (it imports no framework: Litestar, Django's ASGI
  handler or raw ASGI use it as they are): each HTTP request runs inside
  ``abortable(request_id)``, so ``await aborts.handle(request_id).abort()`` from *any* server
  instance stops it. The aborted request ends with status 499 and a JSON body naming the reason.
* :func:`router` — a mountable JSON API and HTML dashboard: list, show, abort, and a
  Server-Sent Events stream per task. Every route answers 403 until ``authorize`` allows it.
* ``FastAPI(lifespan=aborts.lifespan)`` opens the App per process; :func:`combine_lifespans`
  composes it with yours; :func:`get_aborts` / :data:`Aborts` are the FastAPI dependency.

Example::

    aborts = aioabort.App("postgresql://app@db/app")
    api = FastAPI(lifespan=aborts.lifespan)
    api.add_middleware(AbortMiddleware, aborts=aborts, header="x-request-id")
    api.mount("/aioabort", router(aborts, authorize=is_admin))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._lifespan import combine_lifespans
from ._middleware import AbortMiddleware

if TYPE_CHECKING:  # imported on first use (they need Starlette): see __getattr__
    from ._dependencies import Aborts, get_aborts, request_scope
    from ._router import router

__all__ = [
    "AbortMiddleware",
    "Aborts",
    "combine_lifespans",
    "get_aborts",
    "request_scope",
    "router",
]

#: Names that need Starlette, imported when first used.
_STARLETTE = {
    "Aborts": "._dependencies",
    "get_aborts": "._dependencies",
    "request_scope": "._dependencies",
    "router": "._router",
}


def __getattr__(name: str) -> Any:
    if name in _STARLETTE:
        import importlib

        value = getattr(importlib.import_module(_STARLETTE[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
