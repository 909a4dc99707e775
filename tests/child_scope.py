"""A child process for the cross-process tests: runs one abort scope and reports on stdout.

usage: python -m tests.child_scope URL TASK_ID [--swallow | --stubborn]
    [--poll-interval SECONDS] [--reaper]
       python -m tests.child_scope URL PREFIX --repeat COUNT

``--reaper`` first waits until this process holds the fleet's reaper lease and prints
``REAPER``. Prints ``READY`` once the scope is entered, then one of ``ABORTED code message``, ``DONE``.
``--swallow`` swallows the first cancellation (printing ``SWALLOWED``; the next await is
cancelled again); ``--stubborn`` swallows every one and never leaves its scope (it is meant
to be killed).

``--repeat`` runs the scopes ``PREFIX-0`` to ``PREFIX-{COUNT-1}`` one after the other, each
until it is aborted, printing ``READY i`` once scope i is entered and ``CANCELLED i`` once
its abort stopped it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

import aioabort


async def main(
    url: str,
    task_id: str,
    swallow: bool,
    stubborn: bool,
    poll_interval: float | None,
    reaper: bool,
) -> int:
    async with aioabort.App(
        url, heartbeat_interval=0.2, stale_after=1.0, poll_interval=poll_interval
    ) as app:
        # A flag the heartbeat sets, with no event to wait on:
        while reaper and not (app._liveness is not None and app._liveness.reaping):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if reaper:
            print("REAPER", flush=True)
        try:
            async with aioabort.abortable(task_id) as scope:
                print("READY", flush=True)
                if swallow:
                    try:
                        await asyncio.sleep(3600)
                    except asyncio.CancelledError:
                        print("SWALLOWED", flush=True)
                said = False
                while stubborn:
                    try:
                        await asyncio.sleep(3600)
                    except asyncio.CancelledError:
                        if not said:
                            print("SWALLOWED", flush=True)
                            said = True
                await asyncio.sleep(3600)
        except aioabort.TaskAborted as exc:
            assert exc.reason is not None and scope.aborted
            print(f"ABORTED {exc.reason.code} {exc.reason.message}".rstrip(), flush=True)
            return 0
    print("DONE", flush=True)
    return 0


async def repeat(url: str, prefix: str, count: int) -> int:
    async with aioabort.App(url):
        for i in range(count):
            with contextlib.suppress(aioabort.TaskAborted):
                async with aioabort.abortable(f"{prefix}-{i}"):
                    print(f"READY {i}", flush=True)
                    await asyncio.sleep(3600)
            print(f"CANCELLED {i}", flush=True)
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--repeat" in args:
        sys.exit(asyncio.run(repeat(args[0], args[1], int(args[args.index("--repeat") + 1]))))
    interval = float(args[args.index("--poll-interval") + 1]) if "--poll-interval" in args else None
    sys.exit(
        asyncio.run(
            main(
                args[0],
                args[1],
                "--swallow" in args,
                "--stubborn" in args,
                interval,
                "--reaper" in args,
            )
        )
    )
