"""Producers racing on one key: ``rounds`` rounds of ``producers`` processes that each queue
a task with ``key=..., supersede=True`` at the same instant (every process sleeps until the
round's start time, so their transactions overlap); afterwards, each key must have exactly
one task without an abort request. Also the time a superseding ``apply()`` takes, beside a
plain one, in the same run.

``python -m benchmarks.keys [--rounds N] [--producers N]`` prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from typing import Any

import aioabort

from ._procs import REPO
from ._stats import summary_ms

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
#: Seconds between rounds (every producer starts a round at the same wall-clock time).
ROUND = 0.1


def _app(url: str) -> tuple[aioabort.App, aioabort.Task[[], None]]:
    app = aioabort.App(url)

    @app.task(name="noop")
    async def noop() -> None:
        return None

    return app, noop


async def produce(url: str, start: float, rounds: int) -> None:
    """One producer process: at ``start + r * ROUND`` queue the task of round ``r``; prints
    how long each ``apply()`` took (JSON)."""
    app, noop = _app(url)
    took = []
    async with app:
        for r in range(rounds):
            await asyncio.sleep(max(0.0, start + r * ROUND - time.time()))
            began = time.perf_counter()
            await noop.apply(key=f"race:{r}", supersede=True)
            took.append(time.perf_counter() - began)
    print(json.dumps(took), flush=True)


async def run(url: str, *, rounds: int, producers: int) -> dict[str, Any]:
    app, noop = _app(url)
    async with app:  # the schema, before the producers race to make it
        plain = []
        for _ in range(rounds):
            began = time.perf_counter()
            await noop.apply(key="plain")
            plain.append(time.perf_counter() - began)
    start = time.time() + 3.0  # time for every process to open its App
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.keys",
            "--produce",
            url,
            repr(start),
            str(rounds),
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": REPO},
        )
        for _ in range(producers)
    ]
    outputs = [await p.communicate() for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a producer failed: {[p.returncode for p in procs]}")
    superseding = [t for out, _ in outputs for t in json.loads(out)]
    bad = 0
    async with app:
        for r in range(rounds):
            records = await app.tasks(key=f"race:{r}")
            live = [x for x in records if not x.is_finished and x.reason is None]
            if len(records) != producers or len(live) != 1:
                bad += 1
    return {
        "rounds": rounds,
        "producers": producers,
        "rounds_with_exactly_one_live_task": rounds - bad,
        "apply_superseding": summary_ms(superseding),
        "apply_plain_with_key": summary_ms(plain),
    }


async def main() -> None:
    if sys.argv[1:2] == ["--produce"]:
        url, start, rounds = sys.argv[2:5]
        await produce(url, float(start), int(rounds))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--producers", type=int, default=4)
    parser.add_argument("--store", choices=["sqlite", "postgres", "both"], default="both")
    options = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="aioabort-keys-") as tmp:
        if options.store in ("sqlite", "both"):
            results["sqlite"] = await run(
                f"sqlite:///{tmp}/keys.db", rounds=options.rounds, producers=options.producers
            )
        if options.store in ("postgres", "both"):
            schema = f"keys_{uuid.uuid4().hex[:8]}"
            base = os.environ.get("AIOABORT_BENCH_POSTGRES_URL", DEFAULT_POSTGRES)
            try:
                results["postgres"] = await run(
                    f"{base}?aioabort_schema={schema}",
                    rounds=options.rounds,
                    producers=options.producers,
                )
            finally:
                import asyncpg

                conn = await asyncpg.connect(base)
                await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
                await conn.close()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
