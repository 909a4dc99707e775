"""What an operator's reads and bulk writes cost with 100,000 records (issue: lifecycle).

The store holds ``N`` records: half queued, half finished; each has a ``user`` label shared
by 100 records (``u0`` ... ), and every one has ``kind=csv``. Each figure is the median of
``--repeat`` runs, side by side on one store in one run:

- ``tasks(labels=1)``: the 100 records of one user; ``tasks(labels=2)``: the same with
  ``kind=csv``, a label every record has (the filter's worst case);
- ``tasks(id_prefix=)``: the start of an id (a dashboard search) that 10 ids share;
- the dashboard's read, a page and the counts (``GET /tasks``), at offset 0 and 5,000;
- ``unclaimed()`` (``aioabort tasks``'s warning) over the 50,000 queued records;
- ``abort_many()`` of one user's 50 queued tasks (a fresh user each run), then of every
  queued task (about 50,000), once;
- ``purge()`` of the finished records (all 100,000 by then), once.

    python -m benchmarks.lifecycle --store sqlite --records 100000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import aioabort

from .soak import bench_url, drop_schema


async def populate(app: aioabort.App, n: int) -> None:
    @app.task(name="export")
    async def export() -> None: ...

    async def one(i: int) -> None:
        task_id, labels = f"task-{i:06d}", {"user": f"u{i // 100}", "kind": "csv"}
        if i % 2:
            async with aioabort.abortable(task_id, app=app, name="report", labels=labels):
                pass
        else:
            await export.apply(task_id=task_id, labels=labels)

    for start in range(0, n, 500):  # concurrent writes share commits
        await asyncio.gather(*(one(i) for i in range(start, min(n, start + 500))))


async def median_ms(run: Callable[[], Awaitable[Any]], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        began = time.perf_counter()
        await run()
        samples.append(time.perf_counter() - began)
    return round(1000 * statistics.median(samples), 2)


async def measure(url: str, n: int, repeat: int) -> dict[str, float]:
    async with aioabort.App(url) as app:
        began = time.perf_counter()
        await populate(app, n)
        figures: dict[str, float] = {"populate_s": round(time.perf_counter() - began, 1)}
        user = {"user": f"u{n // 200}"}

        async def page(offset: int) -> None:
            await app.tasks(limit=51, offset=offset)
            await app.counts()

        figures["tasks_1_label_ms"] = await median_ms(lambda: app.tasks(labels=user), repeat)
        figures["tasks_2_labels_ms"] = await median_ms(
            lambda: app.tasks(labels={**user, "kind": "csv"}), repeat
        )
        figures["tasks_id_prefix_ms"] = await median_ms(
            lambda: app.tasks(id_prefix=f"task-{n // 20:06d}"[:-1]), repeat
        )
        figures["dashboard_page_0_ms"] = await median_ms(lambda: page(0), repeat)
        figures["dashboard_page_5000_ms"] = await median_ms(lambda: page(5000), repeat)
        figures["unclaimed_ms"] = await median_ms(
            lambda: app.unclaimed(queued_for=timedelta(0)), repeat
        )
        users = iter(range(repeat))

        async def abort_one_user() -> None:
            ids = await app.abort_many(reason="bench", labels={"user": f"u{2 * next(users)}"})
            assert len(ids) == 50, len(ids)

        figures["abort_many_50_ms"] = await median_ms(abort_one_user, repeat)
        began = time.perf_counter()
        every = await app.abort_many(reason="bench: all of them", states=["PENDING"])
        figures["abort_many_all_queued_s"] = round(time.perf_counter() - began, 2)
        figures["aborted"] = len(every)
        began = time.perf_counter()
        purged = await app.purge(older_than=timedelta(0))
        figures["purge_s"] = round(time.perf_counter() - began, 2)
        figures["purged"] = purged
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lifecycle", description=__doc__)
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aioabort-lifecycle-") as tmp:
        url = bench_url(args.store, tmp, "lifecycle")
        try:
            figures = asyncio.run(measure(url, args.records, args.repeat))
        finally:
            if url.startswith("postgres"):
                asyncio.run(drop_schema(url))
    print(f"| {args.store}, {args.records:,} records | median |")
    print("|---|---|")
    for name, value in figures.items():
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
