"""What ``scope.to_thread`` costs over a bare ``anyio.to_thread.run_sync`` of the same call:
the scope waits for its thread in a task of its own (so no cancellation from outside returns
before the thread does). Medians of 7 rounds of 500 calls of a function that returns at once,
side by side in one run: the extra cost is per call, whatever the thread does.

    python -m benchmarks.to_thread
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import anyio.to_thread

import aioabort
from aioabort.testing import MemoryStore

CALLS = 500


def noop() -> int:
    return 1


async def _per_call_us(call: Callable[[], Awaitable[int]]) -> float:
    began = time.perf_counter()
    for _ in range(CALLS):
        await call()
    return (time.perf_counter() - began) / CALLS * 1e6


async def run(rounds: int = 7) -> dict[str, float]:
    bare: list[float] = []
    scoped: list[float] = []
    app = aioabort.App(store=MemoryStore())
    async with app, aioabort.abortable("to-thread-bench", app=app) as scope:
        await _per_call_us(lambda: anyio.to_thread.run_sync(noop))  # warm the threads
        for _ in range(rounds):
            bare.append(await _per_call_us(lambda: anyio.to_thread.run_sync(noop)))
            scoped.append(await _per_call_us(lambda: scope.to_thread(noop)))
    b, s = statistics.median(bare), statistics.median(scoped)
    return {"run_sync_us": round(b, 1), "scope_to_thread_us": round(s, 1), "ratio": round(s / b, 2)}


def main() -> None:
    argparse.ArgumentParser(
        prog="python -m benchmarks.to_thread",
        description="scope.to_thread against anyio.to_thread.run_sync, a call that returns at once.",
    ).parse_args()
    r = asyncio.run(run())
    print(
        f"a call that returns at once: anyio.to_thread.run_sync {r['run_sync_us']} us, "
        f"scope.to_thread {r['scope_to_thread_us']} us ({r['ratio']}x)"
    )


if __name__ == "__main__":
    main()
