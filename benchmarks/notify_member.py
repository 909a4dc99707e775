"""The other processes of the notifier benchmark (``benchmarks/notify.py``).

usage:
  python -m benchmarks.notify_member floor-pg DSN CHANNEL
  python -m benchmarks.notify_member floor-redis URL CHANNEL
  python -m benchmarks.notify_member floor-nats URL SUBJECT
      a bare subscriber: prints ``READY``, then ``GOT <time.perf_counter()>`` per message.
  python -m benchmarks.notify_member listen URL PREFIX COUNT [STEP]
      an App (notifier from ``$AIOABORT_NOTIFIER``, if set) with COUNT scopes open
      (PREFIX-0...), each awaiting in STEP-second steps (default 0.01): prints ``READY``, then
      ``CANCELLED i <perf_counter>`` as each is aborted.
  python -m benchmarks.notify_member write URL SECONDS
      an App that starts and ends tasks one after the other for SECONDS once it reads a line
      on stdin: prints ``READY``, then ``DONE <tasks>``.

``time.perf_counter()`` is CLOCK_MONOTONIC: comparable across processes on Linux.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from typing import Any

import aioabort

from ._stats import work_forever


def _got(*_: Any) -> None:
    print(f"GOT {time.perf_counter()!r}", flush=True)


async def floor_pg(dsn: str, channel: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    await conn.add_listener(channel, _got)
    print("READY", flush=True)
    await asyncio.Event().wait()


async def floor_redis(url: str, channel: str) -> None:
    import redis.asyncio as aioredis

    pubsub = aioredis.Redis.from_url(url).pubsub()
    await pubsub.subscribe(channel)
    await pubsub.get_message(timeout=None)  # the subscription confirmed
    print("READY", flush=True)
    while True:
        message = await pubsub.get_message(timeout=None)
        if message is not None and message["type"] == "message":
            _got()


async def floor_nats(url: str, subject: str) -> None:
    import nats

    client = await nats.connect(url)

    async def got(msg: Any) -> None:
        _got()

    await client.subscribe(subject, cb=got)
    await client.flush()
    print("READY", flush=True)
    await asyncio.Event().wait()


async def listen(url: str, prefix: str, count: int, step: float) -> None:
    async def scope(i: int, entered: asyncio.Event) -> None:
        cancelled_at = 0.0
        try:
            async with aioabort.abortable(f"{prefix}-{i}"):
                entered.set()
                try:
                    await work_forever(step)
                finally:
                    cancelled_at = time.perf_counter()
        except aioabort.TaskAborted:
            pass
        print(f"CANCELLED {i} {cancelled_at!r}", flush=True)

    async with aioabort.App(url):
        tasks = []
        for first in range(0, count, 100):  # entered a hundred at a time
            events = [asyncio.Event() for _ in range(first, min(first + 100, count))]
            tasks += [asyncio.create_task(scope(first + n, e)) for n, e in enumerate(events)]
            await asyncio.gather(*(event.wait() for event in events))
        print("READY", flush=True)
        await asyncio.gather(*tasks)
        await asyncio.Event().wait()  # stay, as a listener, until killed


async def write(url: str, seconds: float) -> None:
    prefix = uuid.uuid4().hex[:10]
    async with aioabort.App(url):
        print("READY", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        done, deadline = 0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            async with aioabort.abortable(f"{prefix}-{done}"):
                pass
            done += 1
    print(f"DONE {done}", flush=True)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "floor-pg":
        asyncio.run(floor_pg(args[0], args[1]))
    elif mode == "floor-redis":
        asyncio.run(floor_redis(args[0], args[1]))
    elif mode == "floor-nats":
        asyncio.run(floor_nats(args[0], args[1]))
    elif mode == "listen":
        step = float(args[3]) if len(args) > 3 else 0.01
        asyncio.run(listen(args[0], args[1], int(args[2]), step))
    else:
        asyncio.run(write(args[0], float(args[1])))
