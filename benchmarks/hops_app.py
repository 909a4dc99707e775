"""The services behind ``python -m benchmarks.hops``: A (Starlette on uvicorn) calls B
(aiohttp, ``trust_parent=True``) with httpx's ``propagate`` hook; B calls C (Starlette on
uvicorn, ``trust_parent=True``) with aiohttp's ``propagation()``. ``GET /wait`` on C, and on A
without ``?chain``, awaits in 10 ms steps until cancelled (a single hop). Each handler prints
``ENTERED <service> <request id>`` when its work or call begins, and
``CANCELLED <service> <request id> <perf_counter>`` when its ``CancelledError`` arrives. The
store is ``AIOABORT_URL``, the next service ``NEXT_URL``, the service's letter ``SERVICE``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp
import httpx
from aiohttp import web
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import aioabort
import aioabort.aiohttp
import aioabort.httpx
from aioabort.web import AbortMiddleware, request_scope

from ._stats import work_forever

T = TypeVar("T")

aborts = aioabort.App()
NEXT_URL = os.environ.get("NEXT_URL", "")
SERVICE = os.environ.get("SERVICE", "?")


async def noting(request_id: str, work: Callable[[], Awaitable[T]]) -> T:
    """``work()``, printing when it begins and the moment its cancellation arrives."""
    print(f"ENTERED {SERVICE} {request_id}", flush=True)
    try:
        return await work()
    except asyncio.CancelledError:
        print(f"CANCELLED {SERVICE} {request_id} {time.perf_counter()!r}", flush=True)
        raise


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


async def wait_asgi(request: Request) -> JSONResponse:
    """A and C: call the next service (A with ``?chain``), or work until cancelled."""
    scope = request_scope(request)
    if "chain" not in request.query_params:
        await noting(scope.id, work_forever)
        return JSONResponse({})
    hooks = {"request": [aioabort.httpx.propagate], "response": [aioabort.httpx.propagate]}
    headers = {"x-request-id": f"{scope.id}.next"}

    async def call() -> object:
        async with httpx.AsyncClient(base_url=NEXT_URL, timeout=None, event_hooks=hooks) as client:
            return (await client.get("/wait", headers=headers)).json()

    return JSONResponse(await noting(scope.id, call))


async def fast(request: Request) -> JSONResponse:
    """A request that only runs in its scope (what trusting a parent costs per request)."""
    return JSONResponse({"time_left": request_scope(request).time_left()})


def asgi(*, trust_parent: bool) -> Starlette:
    routes = [Route("/wait", wait_asgi), Route("/fast", fast), Route("/health", health)]
    app = Starlette(lifespan=aborts.lifespan, routes=routes)
    app.add_middleware(
        AbortMiddleware, aborts=aborts, trust_parent=trust_parent, exclude=("/health",)
    )
    return app


a = asgi(trust_parent=False)
c = asgi(trust_parent=True)


async def wait_b(request: web.Request) -> web.Response:
    scope = request[aioabort.aiohttp.SCOPE]
    trace = [aioabort.aiohttp.propagation()]
    headers = {"x-request-id": f"{scope.id}.next"}

    async def call() -> object:
        async with (
            aiohttp.ClientSession(NEXT_URL, trace_configs=trace) as session,
            session.get("/wait", headers=headers) as answer,
        ):
            return await answer.json()

    return web.json_response(await noting(scope.id, call))


async def health_b(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def b(argv: list[str]) -> web.Application:
    """``python -m aiohttp.web -H 127.0.0.1 -P PORT benchmarks.hops_app:b``"""
    app = web.Application()
    aioabort.aiohttp.setup(app, aborts, trust_parent=True, exclude=("/health",))
    app.router.add_get("/wait", wait_b)
    app.router.add_get("/health", health_b)
    return app
