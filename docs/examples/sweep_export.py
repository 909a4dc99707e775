"""An export that leaves a partial file behind when it is aborted, the sweep that finds every
await where that happens, and the fix. Run it: ``python docs/examples/sweep_export.py``."""

import asyncio
import tempfile
from pathlib import Path

import anyio

import aioabort
from aioabort.testing import SweepRun, abort_sweep

folder = Path(tempfile.mkdtemp())
part = folder / "report.csv.part"


async def export(scope: aioabort.AbortScope) -> None:
    await asyncio.sleep(0.01)  # waits for the rows
    part.write_text("id,total\n")
    try:
        for total in (10, 20):
            await asyncio.sleep(0.01)  # computes a row
            with part.open("a") as out:
                out.write(f"{total}\n")
        part.rename(folder / "report.csv")
    except BaseException:
        await anyio.Path(part).unlink()  # the cleanup's own await: cancelled again
        raise


async def export_fixed(scope: aioabort.AbortScope) -> None:
    await asyncio.sleep(0.01)  # waits for the rows
    part.write_text("id,total\n")
    try:
        for total in (10, 20):
            await asyncio.sleep(0.01)  # computes a row
            with part.open("a") as out:
                out.write(f"{total}\n")
        part.rename(folder / "report.csv")
    except BaseException:
        async with scope.cleanup():  # shielded: it runs to its end after an abort
            await anyio.Path(part).unlink()
        raise


def no_partial_file(run: SweepRun) -> None:
    assert not part.exists(), f"{part.name} left behind"


async def main() -> None:
    report = await abort_sweep(export, check=no_partial_file)
    print(report)
    try:
        report.raise_for_failures()  # what a test calls: it fails naming each failing point
    except AssertionError as failure:
        print(failure)
    fixed = await abort_sweep(export_fixed, check=no_partial_file)
    print(fixed)


asyncio.run(main())
