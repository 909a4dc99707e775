"""Celery's ``celery.contrib.abortable`` on SQLite (SQLAlchemy broker and result backend).

The task awaits nothing (Celery tasks are synchronous): it sleeps 10 ms per step and checks
``self.is_aborted()`` between steps, as Celery's documentation shows. When it sees the abort
it prints ``CANCELLED <id> <perf_counter>`` and returns — which Celery records as SUCCESS.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery
from celery.contrib.abortable import AbortableTask
from kombu.transport import sqlalchemy as kombu_sqlalchemy

# The SQLAlchemy transport polls its table once a second by default and hands its transport
# options to create_engine, so the fair (fast) poll is set on the transport class.
kombu_sqlalchemy.Transport.polling_interval = 0.01

_BROKER = os.environ.get("CELERY_PEER_BROKER", "sqla+sqlite:////tmp/celery-peer-broker.db")
_BACKEND = os.environ.get("CELERY_PEER_BACKEND", "db+sqlite:////tmp/celery-peer-results.db")

app = Celery("celery_peer", broker=_BROKER, backend=_BACKEND)
app.conf.update(
    task_track_started=True,
    worker_redirect_stdouts=False,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    result_extended=False,
)


@app.task(bind=True, base=AbortableTask, name="steps")
def steps(self: Any, n: int) -> str:
    for _ in range(n):
        if self.is_aborted():
            print(f"CANCELLED {self.request.id} {time.perf_counter()!r}", flush=True)
            return "aborted"
        time.sleep(0.01)
    return "done"


@app.task(name="noop")
def noop() -> None:
    return None


@app.task(bind=True, base=AbortableTask, name="spin")
def spin(self: Any, step: float) -> str:
    """The bridge benchmark's task, on Celery's own abortable (``benchmarks.celery_bridge``)."""
    print(f"READY {self.request.id}", flush=True)
    while not self.is_aborted():
        time.sleep(step)
    print(f"CANCELLED {self.request.id} {time.perf_counter()!r}", flush=True)
    return "aborted"


@app.task(bind=True, base=AbortableTask, name="check_cost")
def check_cost(self: Any, n: int) -> float:
    """Seconds per ``self.is_aborted()`` call (a result-backend read), over ``n`` calls."""
    start = time.perf_counter()
    for _ in range(n):
        self.is_aborted()
    return (time.perf_counter() - start) / n
