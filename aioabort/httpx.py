"""aioabort for httpx clients (extra ``httpx``): calls that carry their scope to the service
they call.

:func:`propagate` is an httpx request event hook. A request sent inside a scope gets
``aioabort-parent`` (the scope's task id) and, while a time limit runs, ``aioabort-timeout``
(the seconds left of it); outside a scope it gets nothing. A service whose middleware has
``trust_parent=True`` makes the request a child of that task (aborting the caller stops it)
and takes the time left as its time limit::

    async with httpx.AsyncClient(event_hooks={"request": [aioabort.httpx.propagate]}) as client:
        await client.get("http://reports/build")
"""

from __future__ import annotations

from ._errors import MissingDriver
from .web import _requests

try:
    import httpx
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise MissingDriver(
        'aioabort.httpx needs httpx, which is not installed: pip install "aioabort[httpx]"'
    ) from exc

__all__ = ["propagate"]


async def propagate(request: httpx.Request) -> None:
    """An :class:`httpx.AsyncClient` request hook: add the calling scope's headers (see the
    module's docstring) to ``request``; outside a scope, nothing."""
    request.headers.update(_requests.call_headers())
