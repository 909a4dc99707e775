"""The Celery app the bridge benchmark runs in a real worker (``benchmarks.celery_bridge``):
the same two tasks as Celery's own abortable peer (``peers/celery_peer.py``), on the bridge.

Broker and result backend: ``CELERY_BRIDGE_BROKER`` (a Redis the benchmark started); the
store: ``AIOABORT_URL``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

from aioabort.celery import AbortableTask, setup

_BROKER = os.environ.get("CELERY_BRIDGE_BROKER", "redis://127.0.0.1:6379/0")

app = Celery("celery_bridge", broker=_BROKER, backend=_BROKER)
app.conf.update(
    task_track_started=True,
    worker_redirect_stdouts=False,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)
setup(app, os.environ.get("AIOABORT_URL", "sqlite:///aioabort-bench.db"))


@app.task(bind=True, base=AbortableTask, name="spin")
def spin(self: Any, step: float) -> str:
    """Checks ``is_aborted()`` every ``step`` seconds; prints when it first sees the abort."""
    print(f"READY {self.request.id}", flush=True)
    while not self.is_aborted():
        time.sleep(step)
    print(f"CANCELLED {self.request.id} {time.perf_counter()!r}", flush=True)
    return "aborted"


@app.task(bind=True, base=AbortableTask, name="check_cost")
def check_cost(self: Any, n: int) -> float:
    """Seconds per ``self.is_aborted()`` call, over ``n`` calls in a running task."""
    start = time.perf_counter()
    for _ in range(n):
        self.is_aborted()
    return (time.perf_counter() - start) / n
