"""A FastAPI app with abortable report jobs: start one, watch its progress, cancel it from the
browser — from any instance of the app.

Run it (two instances share one store: a job started on one is cancelled through the other):

    pip install "aioabort[web,cli]" fastapi uvicorn
    export AIOABORT_URL=sqlite:///reports.db
    uvicorn docs.examples.fastapi_app:api --port 8000 &
    uvicorn docs.examples.fastapi_app:api --port 8001 &
    curl -X POST localhost:8000/reports?sections=60          # {"id": "...", ...}
    open http://localhost:8001/aioabort/                       # the dashboard: press Abort

The dashboard and its API are open to every client here (``authorize=local_only`` lets in
requests from this machine only); put your own check there before deploying.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse

import aioabort
from aioabort.web import AbortMiddleware, Aborts, router

aborts = aioabort.App(os.environ.get("AIOABORT_URL", "sqlite:///reports.db"))


@aborts.task(name="build_report", time_limit=3600)
async def build_report(sections: int, seconds_per_section: float) -> dict[str, Any]:
    """The job: one await per section, with progress. Cancelled at the next await if aborted."""
    scope = aioabort.current_scope()
    for section in range(1, sections + 1):
        await asyncio.sleep(seconds_per_section)  # stands in for real work
        await scope.report(section / sections, f"section {section} of {sections}")
    return {"sections": sections, "url": f"/files/report-{scope.id}.pdf"}


def local_only(request: Request) -> bool:
    """Who may see the dashboard and abort tasks: here, requests from this machine."""
    return request.client is not None and request.client.host in ("127.0.0.1", "::1")


api = FastAPI(title="reports", lifespan=aborts.lifespan)
# Every request runs in an abort scope keyed by its X-Request-Id (echoed back when generated).
api.add_middleware(
    AbortMiddleware,
    aborts=aborts,
    header="x-request-id",
    exclude=("/aioabort", "/reports/", "/favicon.ico"),  # the dashboard and status polls
)
api.mount("/aioabort", router(aborts, authorize=local_only))


@api.post("/reports", status_code=202)
async def start_report(aborts: Aborts, sections: int = 20, seconds: float = 0.5) -> dict[str, str]:
    """Start a report job in this server process; anyone can abort it by its id."""
    if not 1 <= sections <= 10_000 or not 0 < seconds <= 60:
        raise HTTPException(400, "sections must be 1..10000 and seconds 0..60")
    handle = await build_report.apply([sections, seconds], spawn=True, detached=True)
    return {
        "id": handle.id,
        "status": f"/reports/{handle.id}",
        "events": f"/aioabort/tasks/{handle.id}/events",
        "abort": f"/aioabort/tasks/{handle.id}/abort",
    }


@api.get("/reports/{report_id}")
async def report_status(report_id: str, aborts: Aborts) -> dict[str, Any]:
    """The job's record: state, progress, reason, result."""
    try:
        record = await aborts.handle(report_id).record()
    except aioabort.TaskNotFound:
        raise HTTPException(404, "no such report") from None
    status: dict[str, Any] = record.to_dict()
    return status


@api.get("/render")
async def render_inline(seconds: float = 30) -> dict[str, str]:
    """A long request: abort it from any instance with the request's X-Request-Id."""
    await asyncio.sleep(seconds)
    return {"rendered": "yes"}


@api.get("/export")
async def export(rows: int = 1000, seconds: float = 0.05) -> StreamingResponse:
    """A streaming CSV export, abortable by its X-Request-Id like any request. An aborted
    export is cut: the connection closes without the last chunk, so a client never takes a
    truncated file for a whole one (curl exits 18)."""
    if not 1 <= rows <= 1_000_000 or not 0 <= seconds <= 10:
        raise HTTPException(400, "rows must be 1..1000000 and seconds 0..10")

    async def lines() -> Any:
        yield "row,square\n"
        for row in range(rows):
            await asyncio.sleep(seconds)
            yield f"{row},{row * row}\n"

    return StreamingResponse(lines(), media_type="text/csv")
