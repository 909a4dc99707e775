"""The bounded soak (benchmarks/soak.py) on every store: worker processes killed with -9 at
random, abort storms, thousands of tasks; nothing may be lost, stuck or changed."""

from __future__ import annotations

import os

import pytest

from benchmarks.soak import soak

SECONDS = float(os.environ.get("AIOABORT_SOAK_SECONDS", "12"))


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_soak_loses_nothing(store_url: str) -> None:
    result = await soak(store_url, SECONDS, workers=3, seed=20261122)
    print(result)
    assert result["tasks_submitted"] > 1000
    assert result["workers_killed"] >= 2
    assert result["aborts_recorded"] > 50
    assert result["aborts_lost"] == 0
    assert result["records_stuck"] == 0
    assert result["terminal_records_changed"] == 0
    assert result["ok"] is True
