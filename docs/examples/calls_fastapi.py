"""Service A of a call between services: a FastAPI app whose requests call service B
(docs/examples/calls_aiohttp.py). Cancel A's request and B's request stops too; give A's call
a deadline and B gets the time that is left.

Run both on one store (B first):

    pip install "aioabort[web,aiohttp,httpx,cli]" fastapi uvicorn
    export AIOABORT_URL=sqlite:///calls.db
    python -m aiohttp.web -H 127.0.0.1 -P 8001 docs.examples.calls_aiohttp:service &
    uvicorn docs.examples.calls_fastapi:api --port 8000 &
    curl -H 'x-request-id: r-1' 'localhost:8000/report?rows=600' &   # B builds it
    aioabort abort r-1 --reason "user pressed stop"   # both stop: curl gets a 499
    curl 'localhost:8000/report?rows=600&deadline=2'  # 504 after 2 s: B stopped too
"""

from __future__ import annotations

import os
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

import aioabort
import aioabort.httpx
from aioabort.web import AbortMiddleware, request_scope

aborts = aioabort.App(os.environ.get("AIOABORT_URL", "sqlite:///calls.db"))
SERVICE_B = os.environ.get("SERVICE_B_URL", "http://127.0.0.1:8001")

api = FastAPI(lifespan=aborts.lifespan)
# A is the edge: it takes no parent from its clients (trust_parent stays off).
api.add_middleware(AbortMiddleware, aborts=aborts, header="x-request-id")


@api.get("/report")
async def report(request: Request, rows: int = 100, deadline: float | None = None) -> Any:
    scope = request_scope(request)  # this request's scope: its id is the x-request-id
    # Calls sent in a scope carry its task id and time left (aioabort-parent, aioabort-timeout);
    # as a response hook, it stops this request at once when B answers that A's abort stopped it.
    hooks = {"request": [aioabort.httpx.propagate], "response": [aioabort.httpx.propagate]}
    try:
        async with (
            httpx.AsyncClient(base_url=SERVICE_B, event_hooks=hooks, timeout=None) as client,
            # A deadline for the call: a scope of its own, a child of the request's.
            aioabort.abortable(f"{scope.id}:b", time_limit=deadline),
        ):
            answer = await client.get("/build", params={"rows": rows})
    except aioabort.TaskAborted as stopped:  # the deadline ran out, and B's request stopped
        reason = stopped.reason.to_dict() if stopped.reason else None
        return JSONResponse({"error": "deadline", "reason": reason}, status_code=504)
    return JSONResponse(answer.json(), status_code=answer.status_code)
