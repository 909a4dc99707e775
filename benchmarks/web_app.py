"""The app behind the web benchmark: the middleware, the router, and an endpoint that awaits
in 10 ms steps and prints when it is cancelled (URL from AIOABORT_URL)."""

from __future__ import annotations

import asyncio
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

import aioabort
from aioabort.web import AbortMiddleware, request_scope, router

aborts = aioabort.App()


async def wait(request: Request) -> JSONResponse:
    scope = request_scope(request)
    try:
        while True:  # noqa: ASYNC110 - the work being measured, in 10 ms steps
            await asyncio.sleep(0.01)
    except asyncio.CancelledError:
        print(f"CANCELLED {scope.id} {time.perf_counter()!r}", flush=True)
        raise


def loopback(request: Request) -> bool:
    return request.client is not None and request.client.host == "127.0.0.1"


api = Starlette(
    lifespan=aborts.lifespan,
    routes=[Route("/wait", wait), Mount("/aioabort", router(aborts, authorize=loopback))],
)
api.add_middleware(AbortMiddleware, aborts=aborts, exclude=("/aioabort",))
