"""A child process for the notifier tests: an App with a notifier, COUNT scopes open at once.

usage: python -m tests.notified_child URL NOTIFIER PREFIX COUNT [POLL_INTERVAL [EXPECT]]

Says (on stderr) ``READY`` once the scopes ``PREFIX-0`` to ``PREFIX-{COUNT-1}`` are all entered, then
``ABORTED i`` as each is stopped by its abort. On SIGTERM it closes its App and prints
``STATS`` and its watcher's statistics as JSON (the notifier's counters under ``notifier``),
once its notifier is connected and received EXPECT messages (or 20 s passed): on SQLite the
store's own file events may deliver an abort before the notifier's message arrives, and after
an outage the store's poll may deliver every abort before the notifier is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import sys

import aioabort


async def main(
    url: str, notifier: str, prefix: str, count: int, poll: float | None, expect: int
) -> int:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    entered = 0
    ready = asyncio.Event()

    async def scope(i: int) -> None:
        nonlocal entered
        with contextlib.suppress(aioabort.TaskAborted):
            async with aioabort.abortable(f"{prefix}-{i}", app=app):
                entered += 1
                if entered == count:
                    ready.set()
                await asyncio.sleep(3600)
        print(f"ABORTED {i}", file=sys.stderr, flush=True)

    app = aioabort.App(url, notifier=notifier, poll_interval=poll)
    async with app:
        tasks = [asyncio.create_task(scope(i)) for i in range(count)]
        await ready.wait()
        print("READY", file=sys.stderr, flush=True)
        await stop.wait()
        deadline = asyncio.get_running_loop().time() + 20
        while asyncio.get_running_loop().time() < deadline:
            received = app.watcher.statistics().notifier
            if received is None or (received.received >= expect and received.connected):
                break
            await asyncio.sleep(0.01)
        statistics = app.watcher.statistics()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    print("STATS " + json.dumps(dataclasses.asdict(statistics)), flush=True)
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    poll = float(args[4]) if len(args) > 4 else None
    expect = int(args[5]) if len(args) > 5 else 0
    sys.exit(asyncio.run(main(args[0], args[1], args[2], int(args[3]), poll, expect)))
