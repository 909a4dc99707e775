"""The pattern of docs/web.md "Jobs queued from a request", served by the shutdown tests: a
request's job dies with it whatever stops the request, a server's shutdown included."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import anyio
from fastapi import FastAPI

import aioabort
from aioabort.web import AbortMiddleware

aborts = aioabort.App(os.environ["AIOABORT_URL"])


@aborts.task(name="build_report")
async def build_report(sections: int, seconds_per_section: float) -> int:
    await asyncio.sleep(sections * seconds_per_section)  # no worker runs here: it stays queued
    return sections


api = FastAPI(lifespan=aborts.lifespan)
api.add_middleware(AbortMiddleware, aborts=aborts, header="x-request-id")


@api.get("/ready")
async def ready() -> dict[str, bool]:
    return {"ready": True}


@api.post("/exports/inline")
async def export_inline() -> dict[str, Any]:
    job = await build_report.delay(20, 0.5)
    try:
        return {"report": await job.result()}
    except asyncio.CancelledError:  # the request was aborted, or the server is going away
        with anyio.CancelScope(shield=True):  # level-triggered: shield the abort's own await
            await job.abort("the request that queued it stopped")
        raise
