"""A child process for the cross-process tests: runs one abort scope and reports on stdout.

usage: python child_scope.py URL TASK_ID [--swallow | --stubborn] [--poll-interval SECONDS]
    [--reaper]

``--reaper`` first waits until this process holds the fleet's reaper lease and prints
``REAPER``. Prints ``READY`` once the scope is entered, then one of ``ABORTED code message``, ``DONE``.
``--swallow`` swallows the first cancellation (printing ``SWALLOWED``; the next await is
cancelled again); ``--stubborn`` swallows every one and never leaves its scope (it is meant
to be killed).
"""

from __future__ import annotations

import asyncio
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
            print(f"ABORTED {exc.reason.code} {exc.reason.message}", flush=True)
            return 0
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
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
