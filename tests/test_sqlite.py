"""What is particular to the SQLite store: WAL, schema versions, locks, a lost file."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from pathlib import Path

import pytest

import aioabort
from aioabort import TaskState
from aioabort.backends._sqlbase import SCHEMA_VERSION
from aioabort.backends.sqlite import SQLiteStore

from .conftest import wait_until


def path_of(url: str) -> str:
    return url[len("sqlite:///") :]


def delete_store_file(path: Path) -> None:
    """The database file and its WAL and shared-memory files, as a cleanup script would."""
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def file_lost_logged(caplog: pytest.LogCaptureFixture) -> bool:
    return any(r.__dict__.get("action") == "store_file_lost" for r in caplog.records)


async def test_wal_mode_and_schema_version(sqlite_url: str) -> None:
    async with aioabort.App(sqlite_url):
        pass
    conn = sqlite3.connect(path_of(sqlite_url))
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        version = conn.execute(
            "SELECT value FROM aioabort_meta WHERE key = 'schema_version'"
        ).fetchone()[0]
        assert int(version) == SCHEMA_VERSION
    finally:
        conn.close()


async def test_reopening_keeps_records(sqlite_url: str) -> None:
    async with aioabort.App(sqlite_url) as app:
        await app.create("kept")
    async with aioabort.App(sqlite_url) as app:
        assert await app.handle("kept").state() is TaskState.PENDING


async def test_newer_schema_is_refused_untouched(sqlite_url: str) -> None:
    async with aioabort.App(sqlite_url):
        pass
    conn = sqlite3.connect(path_of(sqlite_url), isolation_level=None)
    conn.execute("UPDATE aioabort_meta SET value = '999' WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(aioabort.StoreUnavailable, match="schema version 999"):
        await aioabort.App(sqlite_url).open()
    conn = sqlite3.connect(path_of(sqlite_url))
    assert conn.execute("SELECT value FROM aioabort_meta").fetchone()[0] == "999"
    conn.close()


async def test_store_locked_past_the_budget_is_store_busy(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SQLiteStore, "busy_timeout", 0.05)
    monkeypatch.setattr(SQLiteStore, "write_budget", 0.3)
    async with aioabort.App(sqlite_url) as app:
        await app.create("locked")
        blocker = sqlite3.connect(path_of(sqlite_url), isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(aioabort.StoreBusy, match="stayed locked"):
                await app.handle("locked").abort("will not get through")
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        record = await app.handle("locked").record()
        assert record.state is TaskState.PENDING and record.reason is None
        assert await app.handle("locked").abort("now it does") is True


async def test_lock_held_briefly_is_waited_out(sqlite_url: str) -> None:
    import threading

    async with aioabort.App(sqlite_url) as app:
        await app.create("brief")
        store = app.store
        assert isinstance(store, SQLiteStore) and store._conn is not None
        began = threading.Event()

        def traced(sql: str) -> None:  # SQLite calls it in the driver's thread, per attempt
            if sql.startswith("BEGIN IMMEDIATE"):
                began.set()

        await store._conn.set_trace_callback(traced)
        blocker = sqlite3.connect(path_of(sqlite_url), isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        abort = asyncio.create_task(app.handle("brief").abort())
        await wait_until(began.is_set, what="the abort to try for the lock")
        assert not abort.done()  # it waits on the lock (busy_timeout), it does not fail
        blocker.execute("COMMIT")
        blocker.close()
        assert await asyncio.wait_for(abort, 10) is True


async def test_memory_store_works_in_one_process() -> None:
    async with aioabort.App("sqlite:///:memory:") as app:
        entered = asyncio.Event()

        async def body() -> None:
            async with aioabort.abortable("mem"):
                entered.set()
                await asyncio.sleep(60)

        task = asyncio.create_task(body())
        await entered.wait()
        waiter = asyncio.create_task(app.handle("mem").wait(timeout=5))
        assert await app.handle("mem").abort() is True
        with pytest.raises(aioabort.TaskAborted):
            await task
        assert (await waiter).state is TaskState.ABORTED


async def test_heartbeat_is_one_write_per_interval_for_all_scopes(sqlite_url: str) -> None:
    async with aioabort.App(sqlite_url, heartbeat_interval=0.1, stale_after=5) as app:
        release = asyncio.Event()
        entered = [asyncio.Event() for _ in range(50)]

        async def body(i: int) -> None:
            async with aioabort.abortable(f"hb-{i}"):
                entered[i].set()
                await release.wait()

        tasks = [asyncio.create_task(body(i)) for i in range(50)]
        for ev in entered:
            await ev.wait()
        conn = sqlite3.connect(path_of(sqlite_url))

        def last_seen() -> float:
            return float(
                conn.execute(
                    "SELECT last_seen FROM aioabort_owners WHERE id = ?", (app.owner,)
                ).fetchone()[0]
            )

        first = last_seen()
        await wait_until(lambda: last_seen() > first, timeout=5, what="a heartbeat")
        # One owner row, whatever the number of scopes; the tasks rows are not touched.
        assert conn.execute("SELECT COUNT(*) FROM aioabort_owners").fetchone()[0] == 1
        updated = conn.execute(
            "SELECT COUNT(*) FROM aioabort_tasks WHERE updated_at > started_at"
        ).fetchone()[0]
        assert updated == 0
        conn.close()
        release.set()
        await asyncio.gather(*tasks)


async def test_a_stalled_event_loop_never_holds_the_write_lock(sqlite_url: str) -> None:
    """The loop stalls at the worst moment: just as this process's write transaction began.
    Another writer (a plain connection, as another process would be) must still get the lock
    within its own busy timeout, because the transaction does not wait for the loop."""
    import threading

    loop = asyncio.get_running_loop()
    outcome: list[str] = []

    def other_writer() -> None:
        conn = sqlite3.connect(path_of(sqlite_url), isolation_level=None, timeout=2.0)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            outcome.append("got the lock")
        except sqlite3.OperationalError as exc:
            outcome.append(str(exc))
        finally:
            conn.close()

    def stall() -> None:  # runs on the loop: nothing else runs here until it returns
        writer = threading.Thread(target=other_writer)
        writer.start()
        writer.join(timeout=10)

    stalled = threading.Event()

    def traced(sql: str) -> None:  # SQLite calls it in the driver's thread
        if sql.startswith("BEGIN IMMEDIATE") and not stalled.is_set():
            stalled.set()
            loop.call_soon_threadsafe(stall)

    async with aioabort.App(sqlite_url) as app:
        store = app.store
        assert isinstance(store, SQLiteStore) and store._conn is not None
        await store._conn.set_trace_callback(traced)
        await app.create("during-a-stall")
        assert stalled.is_set()
        assert outcome == ["got the lock"], outcome
        assert await app.handle("during-a-stall").state() is TaskState.PENDING


@pytest.mark.parametrize("how", ["deleted", "replaced"])
async def test_a_store_file_deleted_under_a_running_process_fails_loudly(
    sqlite_url: str, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = Path(path_of(sqlite_url))
    async with aioabort.App(sqlite_url) as app:
        await app.create("before")
        delete_store_file(path)
        if how == "replaced":  # another process starts afresh on the same path
            async with aioabort.App(sqlite_url) as newcomer:
                await newcomer.create("in-the-new-file")
        # Idle, the watcher notices and says so...
        await wait_until(lambda: file_lost_logged(caplog), what="the error log")
        # ...and every call fails instead of writing to a file nobody else sees.
        with pytest.raises(aioabort.StoreUnavailable, match="deleted or replaced"):
            await app.create("after")
        with pytest.raises(aioabort.StoreUnavailable, match="deleted or replaced"):
            await app.handle("before").state()
    if how == "replaced":
        async with aioabort.App(sqlite_url) as reader:
            assert await reader.handle("in-the-new-file").state() is TaskState.PENDING
            with pytest.raises(aioabort.TaskNotFound):
                await reader.handle("after").state()


async def test_a_watcher_that_first_runs_after_the_file_was_deleted_only_reports_it(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The watcher's connection is made, and its file checked, before watching starts: its
    thread, however late it first runs, never opens the path itself (it made a new, empty
    file there, or died on SQLite's "disk I/O error" with nobody told)."""
    import threading

    from aioabort.backends._sqlitewatch import ChangePoller

    late: list[ChangePoller] = []
    monkeypatch.setattr(ChangePoller, "start", lambda self: late.append(self))
    path = Path(path_of(sqlite_url))
    async with aioabort.App(sqlite_url) as app:
        [poller] = late
        await app.create("before")
        delete_store_file(path)
        threading.Thread.start(poller)  # as a thread slow to get going would
        await wait_until(lambda: file_lost_logged(caplog), what="the error log")
        assert not await asyncio.to_thread(path.exists)  # not made again, empty
        with pytest.raises(aioabort.StoreUnavailable, match="deleted or replaced"):
            await app.create("after")


async def test_a_call_that_fails_as_the_file_goes_away_says_so(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race inside one call: the file is there when the call checks it, gone when SQLite
    runs the statement, and SQLite says "disk I/O error": the caller is told the file went
    away, not a puzzle."""
    path = Path(path_of(sqlite_url))

    def read_as_the_file_goes(conn: sqlite3.Connection, sql: str, args: object) -> list[object]:
        delete_store_file(path)
        raise sqlite3.OperationalError("disk I/O error")

    async with aioabort.App(sqlite_url) as app:
        await app.create("before")
        monkeypatch.setattr(SQLiteStore, "_run_read", staticmethod(read_as_the_file_goes))
        with pytest.raises(aioabort.StoreUnavailable, match="deleted or replaced"):
            await app.handle("before").state()


async def test_a_version_1_store_is_migrated_and_keeps_its_records(sqlite_url: str) -> None:
    async with aioabort.App(sqlite_url) as app:
        await app.create("kept", name="from version 1")
    conn = sqlite3.connect(path_of(sqlite_url))
    conn.execute("DROP TRIGGER aioabort_timeline_queued")  # what version 7 had not
    conn.execute("DROP TRIGGER aioabort_timeline_requeued")
    conn.execute("DROP TABLE aioabort_events")
    conn.execute("DROP INDEX aioabort_tasks_updated")  # what version 1 had not
    conn.execute("DROP INDEX aioabort_owners_last_seen")  # nor version 2
    conn.execute("DROP TABLE aioabort_leases")
    conn.execute("ALTER TABLE aioabort_tasks DROP COLUMN abort_delivered_at")  # nor version 3
    conn.execute("ALTER TABLE aioabort_tasks DROP COLUMN labels")  # nor version 5
    conn.execute("DROP TABLE aioabort_task_labels")
    conn.execute("DROP TABLE aioabort_workers")  # nor version 6
    conn.execute("UPDATE aioabort_meta SET value = '1' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    async with aioabort.App(sqlite_url) as app:
        assert (await app.handle("kept").record()).name == "from version 1"
    conn = sqlite3.connect(path_of(sqlite_url))
    try:
        version = conn.execute("SELECT value FROM aioabort_meta").fetchone()[0]
        made = {
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE name IN "
                "('aioabort_tasks_updated', 'aioabort_owners_last_seen', 'aioabort_leases', "
                "'aioabort_workers')"
            )
        }
    finally:
        conn.close()
    columns = {
        row[1]
        for row in sqlite3.connect(path_of(sqlite_url)).execute("PRAGMA table_info(aioabort_tasks)")
    }
    assert version == str(SCHEMA_VERSION) == "8"
    assert {"abort_delivered_at", "labels"} <= columns
    assert made == {
        "aioabort_tasks_updated",
        "aioabort_owners_last_seen",
        "aioabort_leases",
        "aioabort_workers",
    }


@pytest.mark.parametrize(
    "query", ["abort_descendants", "purge", "abort_tasks", "finish_batch", "claim"]
)
def test_per_task_statements_do_not_scan_by_state(sqlite_url: str, query: str) -> None:
    """An abort (its descendants), a purge batch, a batch of ends and a claim's update look
    their rows up by id: with the state index SQLite scanned every running (finished,
    queued) task instead — 11 ms per abort with 100,000 queued tasks, 0.4 ms since; 43 ms per
    claim of 50 with 100,000 queued, 1.5 ms since; 1.3 ms per task in a batch of ends."""
    from aioabort.backends.sqlite import QUERIES

    asyncio.run(_open_once(sqlite_url))
    conn = sqlite3.connect(path_of(sqlite_url))
    try:
        sql = QUERIES[query]
        count = max(int(n) for n in re.findall(r"\?(\d+)", sql))
        plan = " | ".join(
            row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, ["x"] * count)
        )
    finally:
        conn.close()
    # The claim finds its candidates through the state index (in queue order): that part may.
    checked = plan.split(" | LIST SUBQUERY")[0] if query == "claim" else plan
    assert "aioabort_tasks_state" not in checked, plan


def test_a_page_of_the_newest_reads_through_the_created_index(sqlite_url: str) -> None:
    """The dashboard's page (no filter, or a state) walks the created_at index and stops
    after a page: sorting the whole table took 16 ms (82 ms at offset 5,000) with 100,000
    records, 0.4 ms since."""
    from aioabort.backends.sqlite import QUERIES

    asyncio.run(_open_once(sqlite_url))
    conn = sqlite3.connect(path_of(sqlite_url))
    try:
        for states in (None, '["PENDING"]'):
            params = [states, None, 51, 0, None, None, None]
            rows = list(conn.execute("EXPLAIN QUERY PLAN " + QUERIES["list_tasks"], params))
            top = " | ".join(row[3] for row in rows if row[1] == 0)  # not the subqueries'
            assert "USING INDEX aioabort_tasks_created" in top, top
            assert "TEMP B-TREE" not in top, top
    finally:
        conn.close()


async def _open_once(url: str) -> None:
    async with aioabort.App(url):
        pass


def test_a_page_of_ids_walks_the_primary_key_from_its_cursor(sqlite_url: str) -> None:
    """``abort_many`` reads its ids by cursor: each page searches the primary key from the
    last id read (a page costs a page), never a scan from the first id or a sort."""
    from aioabort.backends.sqlite import QUERIES

    asyncio.run(_open_once(sqlite_url))
    conn = sqlite3.connect(path_of(sqlite_url))
    try:
        for states in (None, '["PENDING", "STARTED"]'):
            params = [states, None, 500, "some-id", None, None, None]
            rows = list(conn.execute("EXPLAIN QUERY PLAN " + QUERIES["list_ids"], params))
            top = " | ".join(row[3] for row in rows if row[1] == 0)
            assert "SEARCH aioabort_tasks USING INDEX sqlite_autoindex_aioabort_tasks_1 (id>?)" in (
                top
            ), top
            assert "TEMP B-TREE" not in top, top
    finally:
        conn.close()


async def test_the_watcher_checks_once_per_commit_not_once_per_file_event(
    sqlite_url: str,
) -> None:
    """One commit writes the WAL and its index in several file events; the watcher checks
    them together. Its checks stay within one per commit plus one per poll interval of the
    time the commits took (each file event had a check of its own: three per commit)."""
    async with aioabort.App(sqlite_url) as app:
        store = app.runtime.store
        await app.create("warm-up")
        await asyncio.sleep(0.3)  # the warm-up's burst of checks is over
        before, started = app.watcher.statistics().polls, time.monotonic()
        for i in range(20):
            await app.create(f"commit-{i}")
        await asyncio.sleep(0.05)  # the last commit's burst
        elapsed = time.monotonic() - started
        checks = app.watcher.statistics().polls - before
    assert checks <= 20 + elapsed / store.poll_interval + 5, (checks, elapsed)


async def test_without_file_events_the_watcher_polls_and_is_woken(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where there is no inotify (macOS, Windows) the watcher polls: idle with nothing to tell,
    it is woken by the first scope and delivers an abort from another App, round after round."""
    from aioabort.backends import _sqlitewatch

    monkeypatch.setattr(_sqlitewatch._FileEvents, "open", classmethod(lambda cls, d: None))
    async with aioabort.App(sqlite_url) as app, aioabort.App(sqlite_url) as other:
        for round_ in range(3):  # idle, woken by the scope, idle again
            task_id = f"polled-{round_}"
            async with aioabort.abortable(task_id, app=app, suppress=True) as scope:
                await other.handle(task_id).abort("no inotify here")
                await asyncio.sleep(10)  # bounded: cancelled by the abort
            assert scope.aborted
