"""The abort sweep's cost: a body with 100 awaits swept on MemoryStore (target: 2 s or less),
beside the same number of runs of that body in plain abort scopes, in one run.

A sweep of a body with N suspension points runs it N + 2 times (twice without an abort, then
once per point), and run k goes k awaits deep before its abort: about N²/2 awaits in all, so
the figure that matters is the sweep's time; the plain runs show what running the body that
often costs anyway, and the ratio what the sweep adds (driving the coroutine, locating each
point, recording and delivering each abort, the checks). The SQLite line puts every run's
start, abort and end through a real file.

    python -m benchmarks.sweep            # 7 sweeps of each
    python -m benchmarks.sweep --quick    # 3
    python -m benchmarks.sweep --smoke    # 1 (CI runs it so it never rots)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aioabort
from aioabort.testing import MemoryStore, abort_sweep

AWAITS = 100
TARGET_S = 2.0


async def body(scope: aioabort.AbortScope) -> None:
    for _ in range(AWAITS):
        await asyncio.sleep(0)


async def _sweep_seconds(app: aioabort.App | None) -> float:
    began = time.perf_counter()
    report = await abort_sweep(body, app=app)
    elapsed = time.perf_counter() - began
    if report.points != AWAITS or not report.ok:
        raise RuntimeError(f"the benchmark body should pass at {AWAITS} points:\n{report}")
    return elapsed


async def _plain_seconds(runs: int) -> float:
    """``runs`` runs of the body in abort scopes on a MemoryStore, with no abort: the half of
    them aborted halfway would cost less, so this is an upper bound of the body's own share."""
    async with aioabort.App(store=MemoryStore()) as app:
        prefix = uuid.uuid4().hex[:8]
        began = time.perf_counter()
        for i in range(runs):
            async with aioabort.abortable(f"plain-{prefix}-{i}", app=app) as scope:
                await body(scope)
        return time.perf_counter() - began


def _summary(samples: list[float]) -> dict[str, Any]:
    return {
        "n": len(samples),
        "median_s": round(statistics.median(samples), 3),
        "min_s": round(min(samples), 3),
        "max_s": round(max(samples), 3),
    }


async def run(repeats: int) -> dict[str, Any]:
    memory, plain, sqlite = [], [], []
    with tempfile.TemporaryDirectory(prefix="aioabort-sweep-") as tmp:
        for i in range(repeats):  # interleaved, so a busy minute weighs on each alike
            memory.append(await _sweep_seconds(None))
            plain.append(await _plain_seconds(AWAITS + 2))
            async with aioabort.App(f"sqlite:///{Path(tmp) / f'sweep-{i}.db'}") as app:
                sqlite.append(await _sweep_seconds(app))
    swept, bare = _summary(memory), _summary(plain)
    return {
        "awaits": AWAITS,
        "sweep_memory": swept,
        "plain_runs_memory": bare,
        "sweep_sqlite": _summary(sqlite),
        "sweep_over_plain": round(swept["median_s"] / bare["median_s"], 2),
    }


def _print(results: dict[str, Any]) -> None:
    memory, plain = results["sweep_memory"], results["plain_runs_memory"]
    sqlite = results["sweep_sqlite"]
    verdict = "meets" if memory["median_s"] <= TARGET_S else "misses"
    print(f"abort_sweep of a body with {results['awaits']} awaits (median of {memory['n']}):")
    print(
        f"  MemoryStore  {memory['median_s']:.3f} s  (min {memory['min_s']:.3f}, "
        f"max {memory['max_s']:.3f})  target <= {TARGET_S:g} s: {verdict}"
    )
    print(
        f"  the same {results['awaits'] + 2} runs in plain scopes, no abort  "
        f"{plain['median_s']:.3f} s  -> the sweep is {results['sweep_over_plain']:.2f}x"
    )
    print(
        f"  SQLite file  {sqlite['median_s']:.3f} s  (min {sqlite['min_s']:.3f}, "
        f"max {sqlite['max_s']:.3f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 sweeps of each instead of 7")
    parser.add_argument("--smoke", action="store_true", help="1 sweep of each")
    args = parser.parse_args()
    _print(asyncio.run(run(1 if args.smoke else 3 if args.quick else 7)))


if __name__ == "__main__":
    main()
