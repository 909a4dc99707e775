"""A Celery app for the bridge's tests: run by a real ``celery worker`` process.

The broker and result backend come from ``CELERY_BROKER`` (a Redis the test started), the
aioabort store from ``AIOABORT_URL``. Each task reports on the file ``CELERY_PROGRESS`` what
it did, one line per event, for the test to wait on.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

from aioabort.celery import AbortableTask, setup

broker = os.environ.get("CELERY_BROKER", "redis://127.0.0.1:1/0")
app = Celery("aioabort_tests", broker=broker, backend=broker)
SETTINGS: dict[str, Any] = {
    "task_track_started": True,
    "broker_connection_retry_on_startup": True,
    "worker_prefetch_multiplier": 1,
}
app.conf.update(SETTINGS)
if os.environ.get("AIOABORT_URL"):
    setup(app, heartbeat_interval=0.2, stale_after=2.0)


def producer(broker_url: str, store_url: str) -> Celery:
    """A producer's app of a test's own (its broker and store), sending by name."""
    own = Celery("aioabort_test_producer", broker=broker_url, backend=broker_url)
    own.conf.update(SETTINGS)
    setup(own, store_url)
    return own


def say(*words: object) -> None:
    """One line on the progress file (appends are atomic for short lines)."""
    path = os.environ.get("CELERY_PROGRESS")
    if path:
        with open(path, "a") as out:
            out.write(" ".join(str(w) for w in words) + "\n")


@app.task(bind=True, base=AbortableTask)
def steps(self: Any, n: int, step: float = 0.02) -> int:
    """Checks ``raise_if_aborted()`` before each step: stops ABORTED."""
    say("started", self.request.id)
    for _ in range(n):
        self.raise_if_aborted()
        time.sleep(step)
    return n


@app.task(bind=True, base=AbortableTask)
def returns_when_aborted(self: Any, n: int) -> int:
    """The literal port of Celery's example: sees the abort and returns (ends SUCCESS)."""
    say("started", self.request.id)
    for i in range(n):
        if self.is_aborted():
            say("saw-abort", self.request.id)
            return i
        time.sleep(0.02)
    return n


@app.task(bind=True, base=AbortableTask)
def boom(self: Any) -> None:
    raise ValueError("boom")


@app.task(bind=True, base=AbortableTask, max_retries=1, default_retry_delay=0)
def retried(self: Any) -> int:
    say("attempt", self.request.id, self.request.retries)
    if self.request.retries == 0:
        raise self.retry()
    for _ in range(500):
        self.raise_if_aborted()
        time.sleep(0.02)
    return 1


@app.task(bind=True, base=AbortableTask)
def spin(self: Any, count: int) -> int:
    """Counts ``is_aborted()`` calls until one is true (for the benchmark)."""
    calls = 0
    while not self.is_aborted() and calls < count:
        calls += 1
    return calls


@app.task
def plain(x: int) -> int:
    """Not abortable: the bridge leaves it alone."""
    return x * 2
