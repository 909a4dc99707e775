"""A member of a measured fleet, started by :mod:`benchmarks.fleet` as its own process.

    python -m benchmarks.fleet_member apps URL COUNT        # COUNT idle Apps
    python -m benchmarks.fleet_member procrastinate DSN COUNT  # COUNT idle procrastinate workers
    python -m benchmarks.fleet_member scope URL TASK_ID     # one App with one open scope
    python -m benchmarks.fleet_member aborter URL -         # aborts each id read from stdin

Prints ``READY`` once everything is open; stops when its stdin closes. ``scope`` prints
``CANCELLED <time.monotonic()>`` when its scope's body is cancelled (the monotonic clock is the
machine's, so the parent can subtract its own reading).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time

import aioabort


async def _stdin_closed() -> None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)


async def apps(url: str, count: int) -> None:
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(count):
            await stack.enter_async_context(aioabort.App(url))
        print("READY", flush=True)
        await _stdin_closed()


async def procrastinate_workers(dsn: str, count: int) -> None:
    import procrastinate

    from .peers import procrastinate_peer

    workers = []
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(count):
            # A small pool, as aioabort's (min 1): the default (10 each) would exhaust the
            # server's max_connections with a fleet of 40.
            connector = procrastinate.PsycopgConnector(conninfo=dsn, min_size=1, max_size=2)
            app = procrastinate_peer.app.with_connector(connector)
            await stack.enter_async_context(app.open_async())
            workers.append(asyncio.create_task(app.run_worker_async(install_signal_handlers=False)))
        await asyncio.sleep(1.0)  # the workers have connected and LISTEN
        print("READY", flush=True)
        await _stdin_closed()
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


async def scope(url: str, task_id: str) -> None:
    async with aioabort.App(url):
        try:
            async with aioabort.abortable(task_id):
                print("READY", flush=True)
                try:
                    await _stdin_closed()
                except asyncio.CancelledError:
                    print(f"CANCELLED {time.monotonic()!r}", flush=True)
                    raise
        except aioabort.TaskAborted:
            pass
        await _stdin_closed()


async def aborter(url: str) -> None:
    """Aborts the task of each line of stdin, and answers ``OK`` to each."""
    loop = asyncio.get_running_loop()
    async with aioabort.App(url) as app:
        print("READY", flush=True)
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            await app.handle(line.strip()).abort("measured")
            print("OK", flush=True)


def main() -> None:
    kind, target, arg = sys.argv[1:4]
    if kind == "apps":
        asyncio.run(apps(target, int(arg)))
    elif kind == "procrastinate":
        asyncio.run(procrastinate_workers(target, int(arg)))
    elif kind == "aborter":
        asyncio.run(aborter(target))
    else:
        asyncio.run(scope(target, arg))


if __name__ == "__main__":
    main()
