"""Service B of a call between services: an aiohttp app that does the long part for service A
(docs/examples/calls_fastapi.py). With ``trust_parent=True`` a request A sends from inside a
scope is that task's child: aborting A's request (or its parent, or ``abort_many`` on its
labels) stops it with a 499 naming the parent, and A's time left is its time limit.

    python -m aiohttp.web -H 127.0.0.1 -P 8001 docs.examples.calls_aiohttp:service
"""

from __future__ import annotations

import asyncio
import os

from aiohttp import web

import aioabort
from aioabort.aiohttp import SCOPE, setup

aborts = aioabort.App(os.environ.get("AIOABORT_URL", "sqlite:///calls.db"))


async def build(request: web.Request) -> web.Response:
    scope = request[SCOPE]  # the child of A's task, when A called from one
    rows = int(request.query.get("rows", "100"))
    for row in range(rows):
        await asyncio.sleep(0.01)  # stands in for real work: stopped here once aborted
        if row % 50 == 0:
            await scope.report(row / rows, f"row {row} of {rows}")
    return web.json_response({"rows": rows, "built_by": scope.id})


def service(argv: list[str] | None = None) -> web.Application:
    app = web.Application()
    # Only services your own services call may trust the headers of their clients.
    setup(app, aborts, trust_parent=True)
    app.router.add_get("/build", build)
    return app
