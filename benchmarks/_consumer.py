"""A consumer process for the cross-process latency benchmark.

usage: python -m benchmarks._consumer URL PREFIX COUNT

For each i in range(COUNT) it enters ``abortable(f"{PREFIX}-{i}")`` around a body that awaits in
10 ms steps, prints ``READY i``, and when the body's ``CancelledError`` arrives prints
``CANCELLED i <time.perf_counter()>`` (CLOCK_MONOTONIC: comparable across processes on Linux).
"""

from __future__ import annotations

import asyncio
import sys
import time

import aioabort

from ._stats import work_forever


async def main(url: str, prefix: str, count: int) -> None:
    async with aioabort.App(url):
        for i in range(count):
            cancelled_at = 0.0
            try:
                async with aioabort.abortable(f"{prefix}-{i}"):
                    print(f"READY {i}", flush=True)
                    try:
                        await work_forever()
                    finally:
                        cancelled_at = time.perf_counter()
            except aioabort.TaskAborted:
                pass
            print(f"CANCELLED {i} {cancelled_at!r}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
