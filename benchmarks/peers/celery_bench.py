"""Celery's abortable, measured the same way as aioabort: abort latency across processes,
the cost of one ``is_aborted()`` check, the final state of an aborted task, throughput."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .._stats import summary_ms

_REPO = str(Path(__file__).resolve().parent.parent.parent)


def _env(tmp: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": _REPO,
        "CELERY_PEER_BROKER": f"sqla+sqlite:///{tmp}/broker.db",
        "CELERY_PEER_BACKEND": f"db+sqlite:///{tmp}/results.db",
    }


async def _start_worker(env: dict[str, str]) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "celery",
        "-A",
        "benchmarks.peers.celery_peer",
        "worker",
        "--pool=solo",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "--loglevel=WARNING",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
    )
    return proc


def _load(env: dict[str, str]) -> Any:
    os.environ["CELERY_PEER_BROKER"] = env["CELERY_PEER_BROKER"]
    os.environ["CELERY_PEER_BACKEND"] = env["CELERY_PEER_BACKEND"]
    import importlib

    from . import celery_peer

    return importlib.reload(celery_peer)


async def abort_latency(count: int) -> dict[str, Any]:
    from celery.contrib.abortable import AbortableAsyncResult

    with tempfile.TemporaryDirectory(prefix="celery-peer-") as tmp:
        env = _env(tmp)
        peer = _load(env)
        proc = await _start_worker(env)
        assert proc.stdout is not None
        latencies: list[float] = []
        final_states: dict[str, int] = {}
        check_costs: list[float] = []
        try:
            for _ in range(count):
                result = peer.steps.delay(100_000)
                deadline = time.monotonic() + 60
                while result.state != "STARTED":
                    if time.monotonic() > deadline:
                        raise TimeoutError("the Celery worker did not start the task")
                    await asyncio.sleep(0.005)
                await asyncio.sleep(0.003 + (len(latencies) % 7) * 0.001)
                aborter = AbortableAsyncResult(result.id, app=peer.app)
                start = time.perf_counter()
                aborter.abort()
                while True:  # skip the worker's banner
                    line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().split()
                    if not line and proc.stdout.at_eof():
                        raise RuntimeError("the Celery worker exited")
                    if line[:1] == ["CANCELLED"]:
                        break
                assert line[1] == result.id, line
                latencies.append(float(line[2]) - start)
                while result.state in ("STARTED", "ABORTED"):  # noqa: ASYNC110 - Celery is polled
                    await asyncio.sleep(0.005)
                final_states[result.state] = final_states.get(result.state, 0) + 1
                if len(check_costs) < 200:
                    t = time.perf_counter()
                    for _ in range(20):
                        aborter.is_aborted()
                    check_costs.append((time.perf_counter() - t) / 20)
        finally:
            proc.kill()
            await proc.wait()
    costs = sorted(check_costs)
    return {
        "abort_to_cancel": summary_ms(latencies),
        "final_state_of_aborted_task": final_states,
        "is_aborted_check_us": round(costs[len(costs) // 2] * 1e6, 1),
    }


async def throughput(count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="celery-peer-") as tmp:
        env = _env(tmp)
        peer = _load(env)
        proc = await _start_worker(env)
        try:
            warm = peer.noop.delay()
            deadline = time.monotonic() + 60
            while warm.state != "SUCCESS":
                if time.monotonic() > deadline:
                    raise TimeoutError("the Celery worker did not run a task")
                await asyncio.sleep(0.01)
            start = time.perf_counter()
            results = [peer.noop.delay() for _ in range(count)]
            last = results[-1]
            for r in (last, *results):
                while r.state != "SUCCESS":  # noqa: ASYNC110 - Celery results are polled
                    await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - start
        finally:
            proc.kill()
            await proc.wait()
    return {"tasks": count, "seconds": round(elapsed, 3), "tasks_per_s": round(count / elapsed, 1)}
