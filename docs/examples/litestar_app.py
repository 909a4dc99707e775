"""Litestar with aioabort's pure ASGI middleware: every request is abortable by its id.

docs/web.md shows this file as it is, and tests/test_web_servers.py serves it with uvicorn.

    pip install aioabort litestar uvicorn
    AIOABORT_URL=sqlite:///aioabort.db uvicorn docs.examples.litestar_app:app
"""

from __future__ import annotations

import asyncio
import os

from litestar import Litestar, get

import aioabort
from aioabort.web import AbortMiddleware

aborts = aioabort.App(os.environ.get("AIOABORT_URL", "sqlite:///aioabort.db"))


@get("/render")
async def render(seconds: float = 30) -> dict[str, str]:
    """A long request: ``await aborts.handle(request_id).abort()`` from anywhere stops it."""
    await asyncio.sleep(seconds)
    return {"rendered": "yes"}


@get("/health")
async def health() -> dict[str, bool]:
    return {"ok": True}


# Litestar opens and closes the App; the middleware wraps the whole application (outermost).
app = AbortMiddleware(
    Litestar(route_handlers=[render, health], lifespan=[aborts.lifespan]),
    aborts=aborts,
    exclude=("/health",),
)
