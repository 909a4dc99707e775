"""Stores made by every earlier schema (tests/data/old_schemas: each version's DDL, from the
git history) open with today's code: brought up to date before anything is written, judged by
their columns and not only by their version stamp, and then they work."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import asyncpg
import pytest

import aioabort
from aioabort import TaskState
from aioabort.backends._ddl import statements, table_columns
from aioabort.backends._sqlbase import SCHEMA_VERSION
from aioabort.backends.postgres import PostgresStore, parse_url
from aioabort.backends.sqlite import QUERIES

OLD = Path(__file__).parent / "data" / "old_schemas"
#: What the upgrade before this fix left of the oldest stores: stamped with the version of
#: that time (7), but without the beats, retryable and attempts columns (every open then failed).
BROKEN = "1a-stamped-current"
#: The schema of the release that made them (the last one of version 7).
BROKEN_BY = "7b"
CASES = [*sorted(path.stem.split("-", 1)[1] for path in OLD.glob("sqlite-*.sql")), BROKEN]


def old_script(dialect: str, case: str, schema: str = "") -> str:
    """The statements that make the old store of ``case`` (with one finished record)."""
    if dialect == "sqlite":
        tasks, meta, time = "aioabort_tasks", "aioabort_meta", "REAL"
        record = (
            "INSERT INTO aioabort_tasks (id, name, state, result, created_at, updated_at, "
            "finished_at) VALUES ('old-done', 'old', 'SUCCESS', '42', 1.7e9, 1.7e9, 1.7e9)"
        )
    else:
        tasks, meta, time = f"{schema}.tasks", f"{schema}.meta", "timestamptz"
        record = (
            f"INSERT INTO {tasks} (id, name, state, result, finished_at) "
            "VALUES ('old-done', 'old', 'SUCCESS', '42', now())"
        )

    def script(version: str) -> str:
        return (OLD / f"{dialect}-{version}.sql").read_text().replace("{schema}", schema)

    statements = [script("1a" if case == BROKEN else case)]
    if case == BROKEN:  # the two columns it knew to add, that release's statements and stamp
        statements += [
            f"ALTER TABLE {tasks} ADD COLUMN abort_delivered_at {time};",
            f"ALTER TABLE {tasks} ADD COLUMN labels text;",
            *(line for line in script(BROKEN_BY).splitlines() if "INSERT" not in line),
            f"UPDATE {meta} SET value = '7' WHERE key = 'schema_version';",
        ]
    return "\n".join([*statements, f"{record};"])


async def works_today(url: str) -> None:
    """The old record is there; a task runs; an abort (by labels) stops a running scope; and
    the store opens again."""
    async with aioabort.App(url) as app:
        old = await app.handle("old-done").record()
        assert (old.state, old.result) == (TaskState.SUCCESS, 42)

        @app.task(name="add")
        async def add(a: int, b: int) -> int:
            return a + b

        assert await (await add.spawn(1, 2)).result(timeout=10) == 3
        later = await add.apply([1, 1], countdown=3600, expires=7200, time_limit=5)
        queued = await later.record()
        assert queued.not_before is not None and queued.expires_at is not None
        assert queued.time_limit == 5
        assert (await app.runtime.store.next_due(["default"], None)).claimable is not None
        await later.abort()
        assert [e.kind for e in await later.events()] == ["queued", "abort_requested", "ended"]
        entered = asyncio.Event()

        async def running() -> None:
            async with aioabort.abortable("stopped", app=app, labels={"store": "old"}):
                entered.set()
                await asyncio.sleep(60)

        task = asyncio.create_task(running())
        await asyncio.wait_for(entered.wait(), 10)
        assert await app.abort_many(reason="old store", labels={"store": "old"}) == ["stopped"]
        with pytest.raises(aioabort.TaskAborted):
            await asyncio.wait_for(task, 10)
    async with aioabort.App(url) as again:
        record = await again.handle("stopped").record()
        assert record.state is TaskState.ABORTED


def wanted_columns(schema: str) -> dict[str, set[str]]:
    return {table: set(columns) for table, columns in table_columns(schema).items()}


@pytest.mark.parametrize("case", CASES)
async def test_an_old_sqlite_store_is_brought_up_to_date(tmp_path: Path, case: str) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(old_script("sqlite", case))
    await works_today(f"sqlite:///{path}")
    conn = sqlite3.connect(path)
    try:
        found: dict[str, set[str]] = {}
        for table, column in conn.execute(QUERIES["columns"]):
            found.setdefault(table, set()).add(column)
        version = conn.execute("SELECT value FROM aioabort_meta").fetchone()[0]
    finally:
        conn.close()
    assert found == wanted_columns(QUERIES["schema"])
    assert version == str(SCHEMA_VERSION)


@pytest.mark.parametrize("case", CASES)
async def test_an_old_postgres_schema_is_brought_up_to_date(postgres_url: str, case: str) -> None:
    dsn, schema = parse_url(postgres_url)
    queries = PostgresStore(postgres_url).queries
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(old_script("postgres", case, schema))
        await works_today(postgres_url)
        found: dict[str, set[str]] = {}
        for table, column in await conn.fetch(queries["columns"]):
            found.setdefault(table, set()).add(column)
        version = await conn.fetchval(f"SELECT value FROM {schema}.meta")
    finally:
        await conn.close()
    assert found == wanted_columns(queries["schema"])
    assert version == str(SCHEMA_VERSION)


def test_the_columns_of_a_schema_are_read_from_its_create_table_statements() -> None:
    schema = """
        CREATE TABLE IF NOT EXISTS s.t (
            a text PRIMARY KEY,
            b text NOT NULL CHECK (b IN ('x', 'y')),
            c   integer NOT NULL
                DEFAULT 0,
            PRIMARY KEY (a, b)
        );
        CREATE INDEX IF NOT EXISTS t_b ON s.t (b, c);
        CREATE TABLE IF NOT EXISTS u (key TEXT, value TEXT, UNIQUE (key));
    """
    assert table_columns(schema) == {
        "s.t": {
            "a": "a text PRIMARY KEY",
            "b": "b text NOT NULL CHECK (b IN ('x', 'y'))",
            "c": "c integer NOT NULL DEFAULT 0",
        },
        "u": {"key": "key TEXT", "value": "value TEXT"},
    }


def test_a_schema_is_split_into_statements_but_not_inside_a_body() -> None:
    schema = """CREATE TABLE IF NOT EXISTS t (a text);
CREATE INDEX IF NOT EXISTS t_a ON t (a)
    WHERE a IS NOT NULL;
CREATE TRIGGER IF NOT EXISTS t_log AFTER INSERT ON t
BEGIN
    INSERT INTO log VALUES (NEW.a);
    INSERT INTO log VALUES (NEW.a);
END;
CREATE OR REPLACE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO log VALUES (NEW.a);
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS g ON t"""
    found = statements(schema)
    assert [s.split()[0:2] for s in found] == [
        ["CREATE", "TABLE"],
        ["CREATE", "INDEX"],
        ["CREATE", "TRIGGER"],
        ["CREATE", "OR"],
        ["DROP", "TRIGGER"],
    ]
    assert found[2].endswith("END") and found[3].endswith("$$")
