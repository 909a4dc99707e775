"""A FastAPI endpoint with an abort scope of its own, opened by a dependency (no middleware).

docs/web.md shows this file as it is, and tests/test_web.py runs it as it is.

    pip install "aioabort[web]" fastapi uvicorn
    AIOABORT_URL=sqlite:///jobs.db uvicorn docs.examples.fastapi_depends:api
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

import aioabort

aborts = aioabort.App(os.environ.get("AIOABORT_URL", "sqlite:///jobs.db"))
api = FastAPI(lifespan=aborts.lifespan)


async def job_scope(job_id: str) -> AsyncIterator[aioabort.AbortScope]:
    """The endpoint runs inside ``abortable(job_id)``; an abort raises TaskAborted here."""
    async with aioabort.abortable(job_id) as scope:
        yield scope


@api.exception_handler(aioabort.TaskAborted)
async def aborted(request: Request, exc: aioabort.TaskAborted) -> JSONResponse:
    """An aborted job answers 499 with the reason, as the middleware's requests do."""
    reason = None if exc.reason is None else exc.reason.to_dict()
    return JSONResponse(
        {"error": "aborted", "task_id": exc.task_id, "reason": reason}, status_code=499
    )


@api.post("/jobs/{job_id}/run")
async def run(
    scope: Annotated[aioabort.AbortScope, Depends(job_scope, scope="function")],
    seconds: float = 30,
) -> dict[str, str]:
    """A long job; stop it from anywhere with ``await aborts.handle(job_id).abort()``."""
    await asyncio.sleep(seconds)  # stands in for the work
    return {"job": scope.id, "done": "yes"}
