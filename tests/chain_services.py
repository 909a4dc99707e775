"""Three services that call each other, for tests/test_call_chain.py: A (Starlette on uvicorn,
the edge: it trusts no client) calls B (aiohttp, ``trust_parent=True``) with httpx's
``propagate`` hook; B calls C (Starlette on uvicorn, ``trust_parent=True``) with aiohttp's
``propagation()``. Each answers what its request's scope saw, with the next one's answer
inside. The store is ``AIOABORT_URL``; the next service's base URL is ``NEXT_URL``.

``GET /work?seconds=S&limit=L``: A runs the call to B in a scope of its own with time limit
L (when given); C waits S seconds (until aborted). A request with id ``X`` calls the next
service with id ``X.next``, so the test knows every id.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

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

aborts = aioabort.App(os.environ.get("AIOABORT_URL", "sqlite:///chain.db"))
NEXT_URL = os.environ.get("NEXT_URL", "")


def seen(scope: aioabort.AbortScope) -> dict[str, Any]:
    return {"id": scope.id, "time_left": scope.time_left()}


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


# -- A: the edge -------------------------------------------------------------------------------


async def work_a(request: Request) -> JSONResponse:
    scope = request_scope(request)
    limit = request.query_params.get("limit")
    hooks = {"request": [aioabort.httpx.propagate], "response": [aioabort.httpx.propagate]}
    async with (
        httpx.AsyncClient(base_url=NEXT_URL, timeout=120, event_hooks=hooks) as client,
        aioabort.abortable(
            f"{scope.id}.limit", time_limit=None if limit is None else float(limit)
        ) as limited,
    ):
        answer = await client.get(
            "/work", params=request.query_params, headers={"x-request-id": f"{scope.id}.next"}
        )
        before = seen(limited)  # its time left, while its limit runs
    return JSONResponse({**seen(scope), "limited": before, "next": answer.json()})


a = Starlette(lifespan=aborts.lifespan, routes=[Route("/work", work_a), Route("/health", health)])
a.add_middleware(AbortMiddleware, aborts=aborts, exclude=("/health",))


# -- B: aiohttp, calls C -----------------------------------------------------------------------


async def work_b(request: web.Request) -> web.Response:
    scope = request[aioabort.aiohttp.SCOPE]
    async with (
        aiohttp.ClientSession(NEXT_URL, trace_configs=[aioabort.aiohttp.propagation()]) as session,
        session.get(
            "/work", params=request.query, headers={"x-request-id": f"{scope.id}.next"}
        ) as answer,
    ):
        following = await answer.json()
    return web.json_response({**seen(scope), "next": following})


async def health_b(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def b(argv: list[str]) -> web.Application:
    """``python -m aiohttp.web -H 127.0.0.1 -P PORT tests.chain_services:b``"""
    app = web.Application()
    aioabort.aiohttp.setup(app, aborts, trust_parent=True, exclude=("/health",))
    app.router.add_get("/work", work_b)
    app.router.add_get("/health", health_b)
    return app


# -- C: the end of the chain -------------------------------------------------------------------


async def work_c(request: Request) -> JSONResponse:
    scope = request_scope(request)
    await asyncio.sleep(float(request.query_params.get("seconds", "0")))  # until aborted
    return JSONResponse(seen(scope))


c = Starlette(lifespan=aborts.lifespan, routes=[Route("/work", work_c), Route("/health", health)])
c.add_middleware(AbortMiddleware, aborts=aborts, trust_parent=True, exclude=("/health",))
