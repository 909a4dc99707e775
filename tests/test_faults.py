"""Faults: a full disk under SQLite. (Locks held past busy_timeout: test_sqlite.py; the
listener's connection killed: test_postgres.py; wall-clock jumps: test_cross_process.py.)"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import aioabort
from aioabort import TaskState


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs of our own (needs root and mount(2); skipped where neither is there)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the disk is full (to the last 512 bytes)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 512):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return filler


async def test_full_disk_is_a_clear_error_and_nothing_is_half_written(small_disk: Path) -> None:
    url = f"sqlite:///{small_disk / 'aioabort.db'}"
    async with aioabort.App(url) as app:
        keep = await app.create("kept", name="before the disk filled")
        filler = fill(small_disk)
        errors = []
        for i in range(200):  # until the WAL's spare room runs out
            try:
                await app.create(f"more-{i}", name="x" * 150)
            except aioabort.StoreError as exc:
                errors.append(exc)
                break
        assert errors, "the disk never filled up"
        assert "full" in str(errors[0]).lower()
        before = await keep.record()
        with pytest.raises(aioabort.StoreError, match=r"(?i)full"):
            await keep.abort("no room to record this")
        assert await keep.record() == before  # not half written
        filler.unlink()
        assert await keep.abort("now there is room") is True
        record = await keep.record()
        assert record.state is TaskState.ABORTED and record.reason is not None
        assert record.reason.message == "now there is room"
