"""A child process for the cross-process tests: runs one abort scope and reports on stdout.

usage: python child_scope.py URL TASK_ID [--swallow]

Prints ``READY`` once the scope is entered, then one of ``ABORTED code message``, ``DONE``.
"""

from __future__ import annotations

import asyncio
import sys

import aioabort


async def main(url: str, task_id: str, swallow: bool) -> int:
    async with aioabort.App(url, heartbeat_interval=0.2, stale_after=1.0):
        try:
            async with aioabort.abortable(task_id) as scope:
                print("READY", flush=True)
                if swallow:
                    try:
                        await asyncio.sleep(3600)
                    except asyncio.CancelledError:
                        print("SWALLOWED", flush=True)
                await asyncio.sleep(3600)
        except aioabort.TaskAborted as exc:
            assert exc.reason is not None and scope.aborted
            print(f"ABORTED {exc.reason.code} {exc.reason.message}", flush=True)
            return 0
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2], "--swallow" in sys.argv)))
