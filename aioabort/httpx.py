"""aioabort for httpx clients (extra ``httpx``): calls that carry their scope to the service
they call.

:func:`propagate` is an httpx request event hook. A request sent inside a scope gets
``aioabort-parent`` (the scope's task id) and, while a time limit runs, ``aioabort-timeout``
(the seconds left of it); outside a scope it gets nothing. A service whose middleware has
``trust_parent=True`` makes the request a child of that task (aborting the caller stops it)
and takes the time left as its time limit::

    hooks = {"request": [aioabort.httpx.propagate], "response": [aioabort.httpx.propagate]}
    async with httpx.AsyncClient(event_hooks=hooks) as client:
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


async def propagate(message: httpx.Request | httpx.Response) -> None:
    """An :class:`httpx.AsyncClient` event hook. As a ``"request"`` hook it adds the calling
    scope's headers (see the module's docstring) to the request; outside a scope, nothing. As
    a ``"response"`` hook too, a call answered 499 because the caller's own task was aborted
    stops the caller there (its abort is read from the store), before its code sees the
    answer: the called service may hear of the abort before the caller's process does."""
    if isinstance(message, httpx.Response):
        await _requests.call_answered(message.status_code)
    else:
        message.headers.update(_requests.call_headers())
