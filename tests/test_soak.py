"""The bounded soak (tests/_soak.py) on every store: worker processes killed with -9 at
random, abort storms, scopes cancelled while entering, store faults, thousands of tasks;
nothing may be lost, stuck or changed. On PostgreSQL the faults are real server restarts on
a throwaway cluster, made while the producer's event loop is blocked."""

from __future__ import annotations

import os
from typing import Any

import pytest

from ._soak import soak, sqlite_fault
from .conftest import Cluster

SECONDS = float(os.environ.get("AIOABORT_SOAK_SECONDS", "12"))


def check(result: dict[str, Any]) -> None:
    print(result)
    assert result["tasks_submitted"] > 1000
    assert result["workers_killed"] >= 2
    assert result["faults"] >= 2
    assert result["aborts_recorded"] > 50
    assert result["entries_recorded"] > 50
    assert result["aborts_lost"] == 0, result["lost_aborts"]
    assert result["records_stuck"] == 0
    assert result["records_left_running_by_a_live_owner"] == 0
    assert result["terminal_records_changed"] == 0
    assert result["workers_that_exited_by_themselves"] == 0, result["exited_workers_said"]
    assert result["ok"] is True


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_soak_loses_nothing_on_sqlite(sqlite_url: str) -> None:
    check(await soak(sqlite_url, SECONDS, workers=3, seed=20261122, fault=sqlite_fault(sqlite_url)))


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_soak_loses_nothing_on_postgres_across_restarts(cluster: Cluster) -> None:
    async def restart() -> None:
        cluster.stop()  # blocking on purpose: the producer's loop is busy during the restart
        cluster.start()

    url = f"{cluster.url}?aioabort_schema=soak"
    check(await soak(url, SECONDS, workers=3, seed=20261122, fault=restart))
