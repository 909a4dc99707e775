"""A request to an ASGI application, for the abort sweep to send through the web middleware."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ._errors import UsageError

if TYPE_CHECKING:
    from ._app import App

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]
Message = MutableMapping[str, Any]


@dataclass
class Response:
    """What the application answered: its status and body (``None``: no response began)."""

    status: int | None = None
    body: bytes = b""
    complete: bool = False


@dataclass(frozen=True, eq=False)
class AsgiRequest:
    """One request to ``app``, sent once per run with the run's task id as its request id;
    made by :func:`asgi_request`."""

    app: ASGIApp
    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    header: str = "x-request-id"

    def without_scope(self) -> str:
        return (
            "the request made no record: add AbortMiddleware to the application, with "
            f"header={self.header!r} and aborts= the App given as app="
        )

    async def run(self, app: App, task_id: str) -> Response:
        """Send the request in this task, as a server would, and read the whole answer."""
        url = urlsplit(self.path)
        headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()
        ]
        headers.append((self.header.lower().encode("latin-1"), task_id.encode("latin-1")))
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": self.method.upper(),
            "scheme": "http",
            "path": url.path or "/",
            "raw_path": (url.path or "/").encode("latin-1"),
            "query_string": url.query.encode("latin-1"),
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
            "state": {},
        }
        response = Response()
        answered = asyncio.Event()
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": self.body, "more_body": False}
            await answered.wait()  # the client stays until its answer is complete
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                response.status = message["status"]
            elif message["type"] == "http.response.body":
                response.body += message.get("body", b"")
                if not message.get("more_body", False):
                    response.complete = True
                    answered.set()

        await self.app(scope, receive, send)
        return response


def asgi_request(
    app: ASGIApp,
    method: str = "GET",
    path: str = "/",
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    header: str = "x-request-id",
) -> AsgiRequest:
    """A request for :func:`abort_sweep` to sweep: each run sends it to the ASGI ``app``
    (a FastAPI or Starlette application with :class:`~aioabort.web.AbortMiddleware`) in the
    sweep's task, with the run's task id in the request-id ``header``, and aborts it at one
    suspension point of the request's scope. Pass the middleware's App as ``app=``::

        report = await abort_sweep(asgi_request(api, "POST", "/exports"), app=aborts)

    :param app: the ASGI application.
    :param method: the HTTP method.
    :param path: the path, with a query string if any.
    :param headers: more request headers.
    :param body: the request body.
    :param header: the middleware's request-id header.
    :raises UsageError: for a path that does not start with ``/`` or a body that is not bytes.
    """
    if not callable(app):
        raise UsageError(f"asgi_request() needs an ASGI application, got {app!r}")
    if not isinstance(path, str) or not path.startswith("/"):
        raise UsageError(f"the path must start with '/', got {path!r}")
    if not isinstance(body, bytes):
        raise UsageError(f"the body must be bytes, got {type(body).__name__}")
    return AsgiRequest(app, method, path, dict(headers or {}), body, header)
