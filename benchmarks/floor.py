"""The floor under SQLite throughput: the same writes per task, with nothing else around them.

Two processes on one WAL file (``synchronous=NORMAL``, as the store sets it), with the store's
own schema: a producer inserts tasks in batches of 100 (one transaction each, as the group
commit does), and a consumer claims 50 at a time (``UPDATE ... RETURNING``) and writes their
ends in one transaction per claim. No event loop, no scopes, no JSON of arguments: the
distance between this and ``throughput`` is what aioabort itself costs per task.

``python -m benchmarks.floor [COUNT]`` prints tasks/s.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

BATCH = 100
CLAIM = 50

_INSERT = (
    "INSERT INTO aioabort_tasks (id, name, queue, state, args, retryable, created_at,"
    " updated_at) VALUES (?, 'noop', 'default', 'PENDING', '{\"args\":[],\"kwargs\":{}}', 0, ?, ?)"
)
_CLAIM = (
    "UPDATE aioabort_tasks SET state = 'STARTED', owner = ?, started_at = ?, updated_at = ?,"
    " attempts = attempts + 1 WHERE id IN (SELECT id FROM aioabort_tasks WHERE state = 'PENDING'"
    " AND queue = 'default' ORDER BY created_at, rowid LIMIT ?) AND +state = 'PENDING' RETURNING id"
)
_FINISH = (
    "UPDATE aioabort_tasks SET state = 'SUCCESS', result = 'null', finished_at = ?,"
    " updated_at = ? WHERE id = ? AND owner = ? AND state IN ('STARTED', 'ABORTING')"
)


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _produce(path: str, count: int, ready: Any, go: Any) -> None:
    conn = _connect(path)
    ready.release()
    go.wait()
    done = 0
    while done < count:
        n = min(BATCH, count - done)
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_INSERT, [(uuid.uuid4().hex, now, now) for _ in range(n)])
        conn.execute("COMMIT")
        done += n
    conn.close()


def _consume(path: str, count: int, ready: Any, go: Any) -> None:
    conn = _connect(path)
    ready.release()
    go.wait()
    owner = uuid.uuid4().hex
    done = 0
    while done < count:
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        ids = [row[0] for row in conn.execute(_CLAIM, (owner, now, now, CLAIM)).fetchall()]
        conn.execute("COMMIT")
        if not ids:
            time.sleep(0.0005)
            continue
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_FINISH, [(now, now, task_id, owner) for task_id in ids])
        conn.execute("COMMIT")
        done += len(ids)
    conn.close()


async def _make_schema(path: str) -> None:
    import aioabort

    async with aioabort.App(f"sqlite:///{path}"):
        pass


def run(count: int) -> dict[str, Any]:
    """Tasks/s of the bare two-process loop on a fresh file (the store's schema)."""
    with tempfile.TemporaryDirectory(prefix="aioabort-floor-") as home:
        path = str(Path(home, "floor.db"))
        asyncio.run(_make_schema(path))
        context = multiprocessing.get_context("spawn")
        ready, go = context.Semaphore(0), context.Event()
        consumer = context.Process(target=_consume, args=(path, count, ready, go))
        producer = context.Process(target=_produce, args=(path, count, ready, go))
        consumer.start()
        producer.start()
        for _ in range(2):  # both connected: the clock measures the loops, not the start
            ready.acquire()
        start = time.perf_counter()
        go.set()
        producer.join()
        consumer.join()
        elapsed = time.perf_counter() - start
        if producer.exitcode or consumer.exitcode:
            raise RuntimeError(f"the floor loop failed: {producer.exitcode}, {consumer.exitcode}")
    return {"tasks": count, "seconds": round(elapsed, 3), "tasks_per_s": round(count / elapsed, 1)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.floor",
        description="The bare two-process loop doing SQLite's writes per task: tasks/s.",
    )
    parser.add_argument("count", nargs="?", type=int, default=20000, help="tasks (20000)")
    print(run(parser.parse_args().count))
