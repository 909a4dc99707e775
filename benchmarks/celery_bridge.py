"""The Celery bridge beside Celery's own abortable, in one run.

* **abort → ``is_aborted()`` true in a real Celery worker** (prefork, one child): the same
  task on both sides checks ``self.is_aborted()`` every ``--step`` seconds and prints
  ``time.perf_counter()`` when it first sees the abort; the producer reads the clock just
  before ``result.abort()`` (CLOCK_MONOTONIC is shared by the processes of a Linux host).
  Celery's abortable on its documented setup (SQLAlchemy result backend on SQLite); the bridge
  with a Redis broker and the aioabort store on SQLite and PostgreSQL.
* **one ``is_aborted()`` call** inside a running task, on both sides.
* **``abort()`` from a plain thread** (``aioabort.sync``) beside ``await handle.abort()``, the
  same kind of record (queued), the same store.

    python -m benchmarks.celery_bridge --count 100 [--steps 0.001 0.01] [--save]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aioabort
import aioabort.sync

from ._procs import REPO
from ._stats import summary_ms
from .soak import drop_schema

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
RESULTS = Path(__file__).parent / "results"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def redis_server(workdir: str) -> AsyncIterator[str]:
    """A redis-server of the benchmark's own on a free loopback port; yields its URL."""
    program = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        *(program, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                await asyncio.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        await proc.wait()


@asynccontextmanager
async def celery_worker(module: str, env: dict[str, str]) -> AsyncIterator[asyncio.StreamReader]:
    """``celery -A MODULE worker -P prefork -c 1``; yields its stdout once it is ready."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "celery", "-A", module, "worker", "-P", "prefork", "-c", "1"),
        *("--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": REPO, **env},
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        async with asyncio.timeout(60):
            while b" ready." not in await proc.stderr.readline():
                if proc.stderr.at_eof():
                    raise RuntimeError(f"the Celery worker ({module}) exited at start")
        drain = asyncio.create_task(_drain(proc.stderr))
        yield proc.stdout
        drain.cancel()
    finally:
        proc.kill()
        await proc.wait()


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


async def _line(stdout: asyncio.StreamReader, word: str, task_id: str) -> list[str]:
    async with asyncio.timeout(60):
        while True:
            line = (await stdout.readline()).decode().split()
            if not line and stdout.at_eof():
                raise RuntimeError("the Celery worker exited")
            if line[:2] == [word, task_id]:
                return line


async def abort_to_check(
    module: str,
    env: dict[str, str],
    count: int,
    steps: list[float],
    abort: Callable[[Any], None],
) -> dict[str, Any]:
    """Abort ``count`` running ``spin`` tasks per step; the latency until the task saw each
    abort, and the cost of one ``is_aborted()`` in a running task."""
    os.environ.update(env)
    import importlib

    tasks = importlib.reload(importlib.import_module(module))
    out: dict[str, Any] = {}
    async with celery_worker(module, env) as stdout:
        for step in steps:
            latencies: list[float] = []
            for i in range(count):
                result = tasks.spin.delay(step)
                await _line(stdout, "READY", result.id)
                await asyncio.sleep(0.003 + (i % 7) * 0.001)  # a different point each time
                start = time.perf_counter()
                await asyncio.to_thread(abort, result)
                seen = await _line(stdout, "CANCELLED", result.id)
                latencies.append(float(seen[2]) - start)
            out[f"step_{step * 1000:g}ms"] = summary_ms(latencies)
        cost = await asyncio.to_thread(tasks.check_cost.delay(2000).get, timeout=120)
    out["is_aborted_us"] = round(cost * 1e6, 3)
    return out


def _peer_abort(result: Any) -> None:
    from celery.contrib.abortable import AbortableAsyncResult

    AbortableAsyncResult(result.id, app=result.app).abort()


def _bridge_abort(result: Any) -> None:
    from aioabort.celery import AbortableAsyncResult

    AbortableAsyncResult(result.id, app=result.app).abort(reason="benchmark")


async def sync_vs_async(url: str, count: int) -> dict[str, Any]:
    """``abort()`` of a queued record: awaited on this loop, and from a plain thread through
    ``aioabort.sync``, alternately, on one store."""
    async with aioabort.App(url) as app:
        ids = [f"b-{uuid.uuid4().hex[:10]}-{i}" for i in range(2 * count)]
        for task_id in ids:
            await app.create(task_id, name="bench")
        sync_app = aioabort.sync.App(url)
        await asyncio.to_thread(sync_app.open)
        timed_async: list[float] = []
        timed_sync: list[float] = []

        def from_a_thread(task_id: str) -> None:
            handle = sync_app.handle(task_id)
            start = time.perf_counter()
            handle.abort(reason="benchmark")
            timed_sync.append(time.perf_counter() - start)

        for i in range(count):
            handle = app.handle(ids[2 * i])
            start = time.perf_counter()
            await handle.abort(reason="benchmark")
            timed_async.append(time.perf_counter() - start)
            thread = threading.Thread(target=from_a_thread, args=(ids[2 * i + 1],))
            thread.start()
            await asyncio.to_thread(thread.join)
        await asyncio.to_thread(sync_app.close)
    result = {"async": summary_ms(timed_async), "sync_thread": summary_ms(timed_sync)}
    result["ratio_p50"] = round(result["sync_thread"]["p50_ms"] / result["async"]["p50_ms"], 2)
    return result


async def run(count: int, steps: list[float], with_postgres: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"count": count, "steps_ms": [step * 1000 for step in steps]}
    with tempfile.TemporaryDirectory(prefix="aioabort-celery-") as tmp:
        peer_env = {
            "CELERY_PEER_BROKER": f"sqla+sqlite:///{tmp}/broker.db",
            "CELERY_PEER_BACKEND": f"db+sqlite:///{tmp}/results.db",
        }
        out["celery_abortable_sqlite"] = await abort_to_check(
            "benchmarks.peers.celery_peer", peer_env, count, steps, _peer_abort
        )
        stores = {"sqlite": f"sqlite:///{tmp}/bridge.db"}
        if with_postgres:
            base = os.environ.get("AIOABORT_BENCH_POSTGRES_URL", DEFAULT_POSTGRES)
            stores["postgres"] = f"{base}?aioabort_schema=cb_{uuid.uuid4().hex[:8]}"
        async with redis_server(tmp) as broker:
            for store, url in stores.items():
                env = {"CELERY_BRIDGE_BROKER": broker, "AIOABORT_URL": url}
                try:
                    out[f"bridge_{store}"] = await abort_to_check(
                        "benchmarks.celery_bridge_app", env, count, steps, _bridge_abort
                    )
                    out[f"sync_abort_{store}"] = await sync_vs_async(url, count)
                finally:
                    from aioabort.celery import _bridge

                    await asyncio.to_thread(_bridge.close_all)
                    if store == "postgres":
                        await drop_schema(url)
    peer = out["celery_abortable_sqlite"]
    for store in stores:
        bridge = out[f"bridge_{store}"]
        for step in steps:
            key = f"step_{step * 1000:g}ms"
            bridge[key]["ratio_p50_to_celery"] = round(
                bridge[key]["p50_ms"] / peer[key]["p50_ms"], 3
            )
    return out


def report(out: dict[str, Any]) -> str:
    lines = [
        f"{out['count']} aborts a row, one run. The task checks `self.is_aborted()` every step.",
        "",
        "| | step | abort → is_aborted() p50 / p90 / p99 ms | ratio p50 to Celery | one check |",
        "|---|---|---|---|---|",
    ]
    names = {
        "celery_abortable_sqlite": "Celery's abortable (SQLite backend)",
        "bridge_sqlite": "aioabort.celery, SQLite",
        "bridge_postgres": "aioabort.celery, PostgreSQL",
    }
    for key, name in names.items():
        if key not in out:
            continue
        for step in out["steps_ms"]:
            s = out[key][f"step_{step:g}ms"]
            lines.append(
                f"| {name} | {step:g} ms | {s['p50_ms']} / {s['p90_ms']} / {s['p99_ms']} | "
                f"{s.get('ratio_p50_to_celery', 1)} | {out[key]['is_aborted_us']} µs |"
            )
    lines += [
        "",
        "| store | `await abort()` p50 ms | sync `abort()` from a thread p50 ms | ratio |",
    ]
    lines.append("|---|---|---|---|")
    for key in ("sync_abort_sqlite", "sync_abort_postgres"):
        if key in out:
            s = out[key]
            lines.append(
                f"| {key[11:]} | {s['async']['p50_ms']} | {s['sync_thread']['p50_ms']} | "
                f"{s['ratio_p50']} |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.celery_bridge", description=__doc__)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--steps", type=float, nargs="+", default=[0.001, 0.01])
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--save", action="store_true", help="write results/celery_bridge.*")
    args = parser.parse_args()
    out = asyncio.run(run(args.count, args.steps, not args.no_postgres))
    text = report(out)
    print(text)
    if args.save:
        (RESULTS / "celery_bridge.json").write_text(json.dumps(out, indent=2) + "\n")
        (RESULTS / "celery_bridge.md").write_text("# The Celery bridge\n\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
