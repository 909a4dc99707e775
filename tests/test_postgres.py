"""What is particular to the PostgreSQL store: NOTIFY, reconnects, the late-commit race,
schemas and what each listener hears. (The watcher's cost: test_store_cost.py.)"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime

import asyncpg
import pytest

import aioabort
from aioabort import TaskState
from aioabort.backends._sqlbase import SCHEMA_VERSION
from aioabort.backends.postgres import PostgresStore, parse_url
from aioabort.backends.postgres._options import LISTENER_NAME

from .conftest import wait_until
from .test_cross_process import child, read_line

pytestmark = pytest.mark.postgres


async def raw(url: str) -> tuple[asyncpg.Connection, str]:
    dsn, schema = parse_url(url)
    return await asyncpg.connect(dsn), schema


def store_of(app: aioabort.App) -> PostgresStore:
    store = app.store
    assert isinstance(store, PostgresStore)
    return store


async def listener_pids(conn: asyncpg.Connection) -> set[int]:
    """The server processes of the listeners connected to the test database now (each
    listener's connection is named in ``pg_stat_activity``)."""
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 "
        "AND datname = current_database()",
        LISTENER_NAME,
    )
    return {row[0] for row in rows}


async def hears(app: aioabort.App, channel: str) -> bool:
    """Whether ``app``'s listener LISTENs to ``channel`` now, seen from outside: one
    transaction notifies ``channel``, then sends an abort notice on the abort channel (which
    every listener hears). They arrive in that order, so once the notice is seen the count of
    notifications says whether the first came too. Nothing else may be notified meanwhile."""
    store = store_of(app)
    notice = {"id": f"probe-{uuid.uuid4().hex}", "code": "user", "message": "probe"}
    notice |= {"by": "test", "at": datetime.now(UTC).isoformat()}
    notices = app.watcher.statistics().notices
    before = store.statistics().notifications
    conn = await asyncpg.connect(store.dsn)
    try:
        await conn.execute(
            "SELECT pg_notify($1, '[]'), pg_notify($2, $3)",
            channel,
            store.abort_channel,
            json.dumps(notice),
        )
    finally:
        await conn.close()
    await wait_until(lambda: app.watcher.statistics().notices > notices, what="the probe")
    return store.statistics().notifications - before >= 2


async def test_abort_from_another_process_is_pushed_by_notify(postgres_url: str) -> None:
    """The consumer polls only once a minute, so a prompt delivery can only be NOTIFY."""
    async with aioabort.App(postgres_url) as app:
        async with child(postgres_url, "pushed", "--poll-interval", "60") as proc:
            assert await read_line(proc) == "READY"
            start = time.monotonic()
            assert await app.handle("pushed").abort("via notify") is True
            assert await read_line(proc, timeout=10) == "ABORTED user via notify"
            assert time.monotonic() - start < 5
        record = await app.handle("pushed").wait(timeout=10)
        assert record.state is TaskState.ABORTED


async def test_same_store_in_process_push(postgres_url: str) -> None:
    async with (
        aioabort.App(postgres_url, poll_interval=60) as consumer,
        aioabort.App(postgres_url, poll_interval=60) as producer,
    ):
        entered = asyncio.Event()

        async def body() -> None:
            async with aioabort.abortable("push-2", app=consumer):
                entered.set()
                await asyncio.sleep(60)

        task = asyncio.create_task(body())
        await entered.wait()
        await producer.handle("push-2").abort()
        with pytest.raises(aioabort.TaskAborted):
            await asyncio.wait_for(task, 5)
        assert consumer.watcher.statistics().notifications >= 1
        # The producer's wait() is woken by the NOTIFY on the end write, not its 60 s poll.
        record = await asyncio.wait_for(producer.handle("push-2").wait(), 5)
        assert record.state is TaskState.ABORTED


async def test_listener_killed_while_abort_is_sent_is_still_delivered(postgres_url: str) -> None:
    async with (
        aioabort.App(postgres_url, poll_interval=60) as consumer,
        aioabort.App(postgres_url) as producer,
    ):
        entered = asyncio.Event()

        async def body() -> None:
            async with aioabort.abortable("killed-listener", app=consumer):
                entered.set()
                await asyncio.sleep(60)

        task = asyncio.create_task(body())
        await entered.wait()
        admin, _ = await raw(postgres_url)
        try:
            killed = await listener_pids(admin)  # the consumer's and the producer's
            assert len(killed) >= 2
            for pid in killed:
                assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid) is True
            # Sent while the listener is down: no NOTIFY reaches it; the re-read after the
            # reconnect must deliver it (the 60 s poll would be far too late).
            assert await producer.handle("killed-listener").abort("while down") is True
            with pytest.raises(aioabort.TaskAborted) as info:
                await asyncio.wait_for(task, 10)
            assert info.value.reason is not None and info.value.reason.message == "while down"
            await wait_until(lambda: consumer.watcher.statistics().reconnects >= 1)
            assert (await listener_pids(admin)) - killed  # on a connection of its own again
        finally:
            await admin.close()


async def test_late_commit_is_not_skipped_by_the_poll(postgres_url: str) -> None:
    """Abort-log sequence numbers are not commit-ordered: seq N can commit after seq N+1.
    The poll must not move past N before N commits (no NOTIFY here: the poll alone)."""
    async with aioabort.App(postgres_url, poll_interval=0.02) as app:
        await app.create("bystander")
        entered = asyncio.Event()

        async def body() -> None:
            async with aioabort.abortable("late", app=app):
                entered.set()
                await asyncio.sleep(60)

        task = asyncio.create_task(body())
        await entered.wait()
        slow, schema = await raw(postgres_url)
        fast, _ = await raw(postgres_url)
        try:
            tx = slow.transaction()
            await tx.start()
            await slow.execute(
                f"UPDATE {schema}.tasks SET state = 'ABORTING', abort_code = 'user', "
                "abort_message = 'late commit', abort_by = 'test', abort_at = now() "
                "WHERE id = 'late'"
            )
            late_seq = await slow.fetchval(
                f"INSERT INTO {schema}.abort_log (task_id) VALUES ('late') RETURNING seq"
            )
            # A later sequence number commits first...
            early_seq = await fast.fetchval(
                f"INSERT INTO {schema}.abort_log (task_id) VALUES ('bystander') RETURNING seq"
            )
            assert early_seq > late_seq
            polls = app.watcher.statistics().polls
            await wait_until(lambda: app.watcher.statistics().polls >= polls + 5)
            assert not task.done()
            # ...then the earlier one commits, with no NOTIFY.
            await tx.commit()
        finally:
            await slow.close()
            await fast.close()
        with pytest.raises(aioabort.TaskAborted) as info:
            await asyncio.wait_for(task, 10)
        assert info.value.reason is not None and info.value.reason.message == "late commit"


async def test_server_unreachable_at_startup_is_a_clear_error() -> None:
    app = aioabort.App("postgresql://someone:s3cret@127.0.0.1:1/nowhere")
    with pytest.raises(aioabort.StoreUnavailable) as info:
        await app.open()
    message = str(info.value)
    assert "cannot connect to the PostgreSQL store" in message
    assert "s3cret" not in message and "***" in message
    assert not app.is_open


async def test_missing_database_is_a_clear_error(postgres_database: str) -> None:
    url = postgres_database.rsplit("/", 1)[0] + "/aioabort_no_such_database"
    with pytest.raises(aioabort.StoreUnavailable, match="aioabort_no_such_database"):
        await aioabort.App(url).open()


@pytest.mark.parametrize("schema", ["Upper", "has-dash", "x" * 64, "1digit", "a;drop"])
def test_bad_schema_names(schema: str) -> None:
    with pytest.raises(aioabort.InvalidURL):
        aioabort.App(f"postgresql://localhost/db?aioabort_schema={schema}")


async def test_schema_is_created_once_and_versioned(postgres_url: str) -> None:
    apps = [aioabort.App(postgres_url) for _ in range(4)]
    await asyncio.gather(*(a.open() for a in apps))  # concurrent first use
    try:
        conn, schema = await raw(postgres_url)
        try:
            version = await conn.fetchval(
                f"SELECT value FROM {schema}.meta WHERE key = 'schema_version'"
            )
            assert version == str(SCHEMA_VERSION)
            await conn.execute(f"UPDATE {schema}.meta SET value = '99'")
        finally:
            await conn.close()
    finally:
        await asyncio.gather(*(a.aclose() for a in apps))
    with pytest.raises(aioabort.StoreUnavailable, match="schema version 99"):
        await aioabort.App(postgres_url).open()


async def test_owner_that_never_beats_again_is_reaped(postgres_url: str) -> None:
    async with aioabort.App(postgres_url, heartbeat_interval=0.1, stale_after=0.5) as app:
        conn, schema = await raw(postgres_url)
        try:
            await conn.execute(
                f"INSERT INTO {schema}.owners (id, host, pid, last_seen) "
                "VALUES ('dead-owner', 'elsewhere', 1, now() - interval '1 hour')"
            )
            await conn.execute(
                f"INSERT INTO {schema}.tasks (id, state, owner, started_at) "
                "VALUES ('orphan', 'STARTED', 'dead-owner', now())"
            )
        finally:
            await conn.close()
        record = await app.handle("orphan").wait(timeout=10)
        assert record.state is TaskState.FAILURE
        assert record.error is not None and record.error.cause == "lost"


async def test_listener_survives_whatever_its_poll_raises(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A supervisor: an error the driver (or a bug) raises in the listener never ends it."""
    from aioabort.backends.postgres._listener import Listener

    polls = 0
    original = Listener.poll

    async def poll(self: Listener) -> None:
        nonlocal polls
        polls += 1
        if polls == 2:
            raise RuntimeError("a surprise from the driver")
        await original(self)

    monkeypatch.setattr(Listener, "poll", poll)
    async with (
        aioabort.App(postgres_url, poll_interval=0.05) as consumer,
        aioabort.App(postgres_url) as producer,
    ):
        await wait_until(lambda: polls >= 4, what="the listener to go on polling")
        entered = asyncio.Event()

        async def body() -> aioabort.AbortScope:
            async with aioabort.abortable("after-surprise", app=consumer, suppress=True) as s:
                entered.set()
                await asyncio.sleep(3600)
            return s

        task = asyncio.create_task(body())
        await entered.wait()
        assert await producer.handle("after-surprise").abort("still listening") is True
        scope = await asyncio.wait_for(task, 10)
        assert scope.aborted


async def test_abort_storm_never_uses_the_listener_connection_twice_at_once(
    postgres_url: str,
) -> None:
    """Notified reads and the poll share the listener's connection one at a time: a storm of
    aborts with a fast poll costs no reconnects (asyncpg refuses a second operation)."""
    count = 600
    async with (
        aioabort.App(postgres_url, poll_interval=0.005) as consumer,
        aioabort.App(postgres_url) as producer,
    ):
        entered = [asyncio.Event() for _ in range(count)]

        async def body(i: int) -> aioabort.AbortScope:
            async with aioabort.abortable(f"storm-{i}", app=consumer, suppress=True) as s:
                entered[i].set()
                await asyncio.sleep(3600)
            return s

        tasks = [asyncio.create_task(body(i)) for i in range(count)]
        for event in entered:
            await event.wait()
        for start in range(0, count, 50):
            await asyncio.gather(
                *(producer.handle(f"storm-{i}").abort("storm") for i in range(start, start + 50))
            )
        scopes = await asyncio.wait_for(asyncio.gather(*tasks), 60)
        assert all(scope.aborted for scope in scopes)
        assert consumer.watcher.statistics().reconnects == 0


@pytest.mark.parametrize("message", ["short", "🛑" * 2000], ids=["in-the-notice", "too-long"])
async def test_an_abort_notice_carries_its_reason(postgres_url: str, message: str) -> None:
    """Trust the push: the listener delivers the reason the notification carries and reads no
    row; a reason too long for NOTIFY's 8,000 bytes comes as the id alone, and is read."""
    async with (
        aioabort.App(postgres_url, poll_interval=60) as consumer,
        aioabort.App(postgres_url) as producer,
    ):
        entered = asyncio.Event()

        async def body() -> aioabort.AbortScope:
            async with aioabort.abortable("pushed", app=consumer, suppress=True) as scope:
                entered.set()
                await asyncio.sleep(3600)
            return scope

        task = asyncio.create_task(body())
        await entered.wait()
        before = consumer.watcher.statistics()
        assert await producer.handle("pushed").abort(message) is True
        scope = await asyncio.wait_for(task, 10)
        after = consumer.watcher.statistics()
    assert scope.aborted and scope.reason is not None and scope.reason.message == message
    assert after.polls == before.polls  # delivered by the notification, not the poll
    reads = after.statements - before.statements
    assert reads == (0 if message == "short" else 1)


async def test_a_process_hears_only_what_it_needs(postgres_url: str) -> None:
    """DESIGN rule 13: a process with no waiter and no worker hears abort requests only —
    not the fleet's task ends, nor new work. Notifications from one session arrive in commit
    order, so once the closing abort has arrived nothing sent before it can still come."""
    async with aioabort.App(postgres_url) as quiet, aioabort.App(postgres_url) as busy:

        @busy.task(queue="somewhere")
        async def queued() -> None: ...

        before = quiet.watcher.statistics().notifications
        for i in range(5):
            async with aioabort.abortable(f"ends-{i}", app=busy):
                pass
            await queued.delay()
        await busy.create("closing")
        await busy.handle("closing").abort("the last notification")
        await wait_until(lambda: quiet.watcher.statistics().notices > 0, what="the abort")
        assert quiet.watcher.statistics().notifications - before == 1


async def test_waiters_and_workers_subscribe_to_what_they_wait_for(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A waiter makes its process LISTEN to task ends (until a while after the last one
    leaves); a worker to the channels of its own queues only."""
    monkeypatch.setattr("aioabort._watcher._ENDS_LINGER", 0.05)
    async with aioabort.App(postgres_url) as app, aioabort.App(postgres_url) as other:
        store = store_of(app)
        await app.create("awaited")
        waiter = asyncio.create_task(app.handle("awaited").wait(timeout=30))
        await wait_until(lambda: hears(app, store.end_channel), what="LISTEN ends")
        await other.handle("awaited").abort("seen through the end channel")
        assert (await waiter).state is TaskState.ABORTED
        await wait_until(lambda: _not(hears(app, store.end_channel)), what="UNLISTEN")

        worker = aioabort.Worker(app, queues=["mine"])
        running = asyncio.create_task(worker.run())
        await wait_until(lambda: hears(app, store.queue_channel("mine")), what="LISTEN mine")
        assert not await hears(app, store.queue_channel("theirs"))
        assert len({store.queue_channel(q) for q in ("mine", "theirs", "x" * 5000)}) == 3
        worker.stop()
        await running
        await wait_until(lambda: _not(hears(app, store.queue_channel("mine"))), what="UNLISTEN")


async def test_ends_are_coalesced_into_few_notifications_yet_every_id_arrives(
    postgres_url: str,
) -> None:
    """A group commit's ends go out as JSON arrays of ids, as few as fit under NOTIFY's
    8,000 bytes: ids long and full of what JSON escapes still all reach their waiters."""
    count = 300
    ids = [f"{i}-" + '"é\\' * 60 for i in range(count)]  # ~360 bytes each as JSON
    async with aioabort.App(postgres_url) as app, aioabort.App(postgres_url) as other:
        release = asyncio.Event()
        entered = 0

        async def body(task_id: str) -> None:
            nonlocal entered
            async with aioabort.abortable(task_id, app=other):
                entered += 1
                await release.wait()

        bodies = [asyncio.create_task(body(task_id)) for task_id in ids]
        await wait_until(lambda: entered == count)
        waiters = [asyncio.create_task(app.handle(task_id).wait(timeout=60)) for task_id in ids]
        await wait_until(lambda: app.watcher.statistics().waited_ids == count)
        before = app.watcher.statistics().notifications
        release.set()  # they all end at once: group commits of many
        await asyncio.gather(*bodies)
        records = await asyncio.gather(*waiters)
        notifications = app.watcher.statistics().notifications - before
    assert [r.id for r in records] == ids
    assert {r.state for r in records} == {TaskState.SUCCESS}
    assert notifications < count / 5, notifications


async def test_abort_many_retries_a_read_whose_connection_dropped(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bulk abort's reads are safe to repeat, so they retry on a fresh connection as its
    writes do: the server ends the connection in the middle of the second page's read (held
    there by a lock), and every queued task is still aborted."""
    from .test_app import after_each_read

    monkeypatch.setattr("aioabort._app.ABORT_BATCH", 4)
    async with aioabort.App(postgres_url, poll_interval=60) as app:
        ids = [(await app.create(f"queued-{i:02}")).id for i in range(10)]
        admin, schema = await raw(postgres_url)
        killed: list[int] = []

        async def drop_the_reader(pid: int) -> None:
            killed.append(pid)
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid) is True

        async def the_next_read_loses_its_connection(page: int) -> None:
            if page != 1:
                return
            await admin.execute("BEGIN")
            await admin.execute(f"LOCK TABLE {schema}.tasks IN ACCESS EXCLUSIVE MODE")

            async def kill_then_unlock() -> None:
                async def blocked() -> list[int]:
                    rows = await admin.fetch(
                        "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND datname = current_database() AND application_name <> $1",
                        LISTENER_NAME,
                    )
                    return [row[0] for row in rows]

                await wait_until(lambda: _any(blocked()), what="the read waiting for the lock")
                for pid in await blocked():
                    await drop_the_reader(pid)
                await admin.execute("ROLLBACK")

            unlock.append(asyncio.create_task(kill_then_unlock()))

        unlock: list[asyncio.Task[None]] = []
        after_each_read(monkeypatch, app.store, the_next_read_loses_its_connection)
        try:
            aborted = await app.abort_many(reason="all", states=["PENDING"])
        finally:
            await asyncio.gather(*unlock, return_exceptions=True)
            await admin.close()
        assert killed  # the read really lost its connection
        assert sorted(aborted) == ids
        assert {(await app.handle(i).record()).state for i in ids} == {TaskState.ABORTED}


async def _any(rows: Awaitable[list[int]]) -> bool:
    return bool(await rows)


async def _not(value: Awaitable[bool]) -> bool:
    return not await value
