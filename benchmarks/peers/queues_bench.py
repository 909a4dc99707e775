"""procrastinate and arq, measured the way aioabort is: abort latency from the abort call to
the job's ``CancelledError`` (another process, CLOCK_MONOTONIC), and queue throughput."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Self

from .._stats import summary_ms

_REPO = str(Path(__file__).resolve().parent.parent.parent)
_DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


async def _read_cancelled(stream: asyncio.StreamReader, job_id: str) -> float:
    while True:
        line = (await asyncio.wait_for(stream.readline(), 60)).decode().split()
        if not line and stream.at_eof():
            raise RuntimeError("the worker exited")
        if line[:1] == ["CANCELLED"]:
            assert line[1] == job_id, line
            return float(line[2])


def _deferrer(app: Any, name: str) -> Any:
    """A deferrer bound to *this* app's job manager (the peer module's app is another one)."""
    from procrastinate import tasks

    return tasks.configure_task(name=name, job_manager=app.job_manager)


# -- procrastinate ---------------------------------------------------------------------------


class _ProcrastinateDatabase:
    """A throwaway database with procrastinate's schema, dropped afterwards."""

    def __init__(self) -> None:
        base = os.environ.get("AIOABORT_BENCH_POSTGRES_URL", _DEFAULT_PG).split("?", 1)[0]
        self.admin = base
        self.name = f"bench_procrastinate_{uuid.uuid4().hex[:8]}"
        self.dsn = base.rsplit("/", 1)[0] + "/" + self.name

    async def __aenter__(self) -> Self:
        import asyncpg

        conn = await asyncpg.connect(self.admin)
        try:
            await conn.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            await conn.close()
        os.environ["PROCRASTINATE_BENCH_DSN"] = self.dsn
        import procrastinate

        from . import procrastinate_peer

        # A fresh App (same tasks) per database: a connector's pool cannot be reopened.
        self.app = procrastinate_peer.app.with_connector(
            procrastinate.PsycopgConnector(conninfo=self.dsn)
        )
        self._opened = self.app.open_async()
        await self._opened.__aenter__()
        await self.app.schema_manager.apply_schema_async()
        return self

    async def __aexit__(self, *exc: object) -> None:
        import asyncpg

        await self._opened.__aexit__(None, None, None)
        conn = await asyncpg.connect(self.admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await conn.close()

    async def worker(self) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "procrastinate",
            "--app=benchmarks.peers.procrastinate_peer.app",
            "worker",
            "--concurrency=50",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": _REPO, "PROCRASTINATE_BENCH_DSN": self.dsn},
        )


async def procrastinate_latency(count: int) -> dict[str, Any]:
    latencies: list[float] = []
    final: dict[str, int] = {}
    async with _ProcrastinateDatabase() as db:
        app = db.app
        proc = await db.worker()
        assert proc.stdout is not None
        try:
            if True:  # the app is open for the database's lifetime
                for i in range(count):
                    job_id = await _deferrer(app, "steps").defer_async(n=100_000)
                    deadline = time.monotonic() + 60
                    while True:
                        jobs = list(await app.job_manager.list_jobs_async(id=job_id))
                        if jobs and jobs[0].status == "doing":
                            break
                        if time.monotonic() > deadline:
                            raise TimeoutError("procrastinate did not start the job")
                        await asyncio.sleep(0.005)
                    await asyncio.sleep(0.003 + (i % 7) * 0.001)
                    start = time.perf_counter()
                    await app.job_manager.cancel_job_by_id_async(job_id, abort=True)
                    latencies.append(await _read_cancelled(proc.stdout, str(job_id)) - start)
                    while True:
                        job = next(iter(await app.job_manager.list_jobs_async(id=job_id)))
                        status = str(job.status)
                        if status != "doing":
                            break
                        await asyncio.sleep(0.005)
                    final[status] = final.get(status, 0) + 1
        finally:
            proc.kill()
            await proc.wait()
    return {"abort_to_cancel": summary_ms(latencies), "final_state_of_aborted_task": final}


async def procrastinate_throughput(count: int) -> dict[str, Any]:
    async with _ProcrastinateDatabase() as db:
        app = db.app
        proc = await db.worker()
        try:
            if True:  # the app is open for the database's lifetime
                start = time.perf_counter()
                await _deferrer(app, "noop").batch_defer_async(*({} for _ in range(count)))
                while True:
                    done = list(await app.job_manager.list_jobs_async(status="succeeded"))
                    if len(done) >= count:
                        break
                    await asyncio.sleep(0.02)
                elapsed = time.perf_counter() - start
        finally:
            proc.kill()
            await proc.wait()
    return {"tasks": count, "seconds": round(elapsed, 3), "tasks_per_s": round(count / elapsed, 1)}


# -- arq -------------------------------------------------------------------------------------


async def _arq_worker(queue: str, poll_delay: float) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "arq",
        "benchmarks.peers.arq_peer.WorkerSettings",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={
            **os.environ,
            "PYTHONPATH": _REPO,
            "ARQ_BENCH_QUEUE": queue,
            "ARQ_BENCH_POLL_DELAY": str(poll_delay),
        },
    )


async def arq_latency(count: int, poll_delay: float = 0.5) -> dict[str, Any]:
    from arq import create_pool
    from arq.connections import RedisSettings
    from arq.jobs import JobStatus

    queue = f"arq:bench:{uuid.uuid4().hex[:8]}"
    redis = await create_pool(RedisSettings(host="127.0.0.1", port=6379), default_queue_name=queue)
    proc = await _arq_worker(queue, poll_delay)
    assert proc.stdout is not None
    latencies: list[float] = []
    try:
        for i in range(count):
            job = await redis.enqueue_job("steps", 100_000)
            assert job is not None
            deadline = time.monotonic() + 60
            while await job.status() is not JobStatus.in_progress:
                if time.monotonic() > deadline:
                    raise TimeoutError("arq did not start the job")
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.003 + (i % 7) * 0.001)
            start = time.perf_counter()
            aborting = asyncio.create_task(job.abort(timeout=30, poll_delay=0.01))
            latencies.append(await _read_cancelled(proc.stdout, job.job_id) - start)
            await aborting
    finally:
        proc.kill()
        await proc.wait()
        await redis.aclose()
    return {"abort_to_cancel": summary_ms(latencies), "poll_delay_s": poll_delay}


async def arq_throughput(count: int, poll_delay: float) -> dict[str, Any]:
    from arq import create_pool
    from arq.connections import RedisSettings

    queue = f"arq:bench:{uuid.uuid4().hex[:8]}"
    redis = await create_pool(RedisSettings(host="127.0.0.1", port=6379), default_queue_name=queue)
    proc = await _arq_worker(queue, poll_delay)
    try:
        start = time.perf_counter()
        jobs = [await redis.enqueue_job("noop") for _ in range(count)]
        for job in jobs:
            assert job is not None
            await job.result(timeout=120, poll_delay=0.01)
        elapsed = time.perf_counter() - start
    finally:
        proc.kill()
        await proc.wait()
        await redis.aclose()
    return {
        "tasks": count,
        "seconds": round(elapsed, 3),
        "tasks_per_s": round(count / elapsed, 1),
        "poll_delay_s": poll_delay,
    }
