"""Bad input gets a specific error at the call that made the mistake; nothing is written."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import aioabort
from aioabort import TaskState


@pytest.mark.parametrize(
    "task_id",
    ["", "x" * 201, 42, None, b"bytes", "nul\x00byte", "new\nline", "\ud800surrogate"],
    ids=["empty", "oversized", "int", "none", "bytes", "nul", "newline", "surrogate"],
)
async def test_bad_task_ids(app: aioabort.App, task_id: object) -> None:
    with pytest.raises(aioabort.InvalidTaskId):
        app.handle(task_id)  # type: ignore[arg-type]
    with pytest.raises(aioabort.InvalidTaskId):
        aioabort.abortable(task_id)  # type: ignore[arg-type]
    if task_id is not None:  # create() without an id makes one up
        with pytest.raises(aioabort.InvalidTaskId):
            await app.create(task_id)  # type: ignore[arg-type]
    assert await app.tasks() == []


async def test_longest_task_id_is_accepted(app: aioabort.App) -> None:
    task_id = "é" * 200
    async with aioabort.abortable(task_id):
        pass
    assert await app.handle(task_id).state() is TaskState.SUCCESS


@pytest.mark.parametrize(
    "url",
    ["mysql://localhost/db", "sqlite:/relative.db", "sqlite://host/db", "", "not a url", 3],
)
def test_bad_urls(url: object) -> None:
    with pytest.raises(aioabort.InvalidURL):
        aioabort.App(url)  # type: ignore[arg-type]


async def test_no_url_and_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIOABORT_URL", raising=False)
    app = aioabort.App()  # a module-level App may get its URL from the environment later
    with pytest.raises(aioabort.InvalidURL, match="AIOABORT_URL"):
        await app.open()
    assert not app.is_open
    monkeypatch.setenv("AIOABORT_URL", "mysql://nope")
    with pytest.raises(aioabort.InvalidURL, match="unknown store URL"):
        await app.open()


def test_url_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AIOABORT_URL", f"sqlite:///{tmp_path}/env.db")
    assert aioabort.App().url.endswith("env.db")


def test_constructor_does_no_io(tmp_path: Path) -> None:
    aioabort.App(f"sqlite:///{tmp_path}/never-opened.db")
    assert list(tmp_path.iterdir()) == []


def test_bad_settings() -> None:
    with pytest.raises(aioabort.UsageError):
        aioabort.App("sqlite:///x.db", heartbeat_interval=0)
    with pytest.raises(aioabort.UsageError):
        aioabort.App("sqlite:///x.db", heartbeat_interval=5, stale_after=5)


async def test_missing_directory_is_unavailable(tmp_path: Path) -> None:
    app = aioabort.App(f"sqlite:///{tmp_path}/missing/dir/a.db")
    with pytest.raises(aioabort.StoreUnavailable, match="does not exist"):
        await app.open()
    assert not app.is_open
    assert not (tmp_path / "missing").exists()


async def test_path_that_is_a_directory_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(aioabort.StoreUnavailable, match="directory"):
        await aioabort.App(f"sqlite:///{tmp_path}").open()


async def test_file_that_is_not_sqlite_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"these are not the pages you are looking for" * 100)
    with pytest.raises(aioabort.StoreUnavailable, match="not a database"):
        await aioabort.App(f"sqlite:///{path}").open()
    assert path.read_bytes().startswith(b"these are not")


@pytest.mark.parametrize(
    ("reason", "by"),
    [
        (aioabort.AbortReason, None),
        (12, None),
        ("x" * 2001, None),
        ("nul\x00", None),
        ("fine", "b" * 201),
    ],
    ids=["class", "int", "long-message", "nul", "long-by"],
)
async def test_bad_reasons_write_nothing(app: aioabort.App, reason: object, by: str | None) -> None:
    await app.create("target")
    with pytest.raises(aioabort.InvalidReason):
        await app.handle("target").abort(reason, by=by)  # type: ignore[arg-type]
    record = await app.handle("target").record()
    assert record.state is TaskState.PENDING and record.reason is None


@pytest.mark.parametrize("code", ["", "User", "has space", "x" * 33, 5])
def test_bad_reason_codes(code: object) -> None:
    with pytest.raises(aioabort.InvalidReason):
        aioabort.AbortReason(code)  # type: ignore[arg-type]


def test_naive_datetime_is_refused() -> None:
    from datetime import datetime

    with pytest.raises(aioabort.InvalidReason):
        aioabort.AbortReason("user", "", None, datetime(2026, 1, 1))


async def test_entering_a_finished_task_is_refused(app: aioabort.App) -> None:
    async with aioabort.abortable("once"):
        pass
    before = await app.handle("once").record()
    with pytest.raises(aioabort.TaskAlreadyFinished):
        async with aioabort.abortable("once"):
            pytest.fail("the body must not run")  # pragma: no cover
    assert await app.handle("once").record() == before
    assert app.watcher.statistics().open_scopes == 0


async def test_second_entry_in_one_process_is_refused(app: aioabort.App) -> None:
    async with aioabort.abortable("dup"):
        with pytest.raises(aioabort.ScopeAlreadyEntered):
            async with aioabort.abortable("dup"):
                pytest.fail("the body must not run")  # pragma: no cover
        assert await app.handle("dup").state() is TaskState.STARTED
    assert await app.handle("dup").state() is TaskState.SUCCESS


async def test_entry_of_a_task_running_elsewhere_is_refused(
    app: aioabort.App, other_app: aioabort.App
) -> None:
    async with aioabort.abortable("elsewhere", app=app):
        with pytest.raises(aioabort.TaskAlreadyStarted):
            async with aioabort.abortable("elsewhere", app=other_app):
                pytest.fail("the body must not run")  # pragma: no cover
        record = await app.handle("elsewhere").record()
        assert record.state is TaskState.STARTED and record.owner == app.owner


async def test_abortable_without_an_open_app() -> None:
    with pytest.raises(aioabort.NoAppOpen, match=r"async with aioabort\.App"):
        async with aioabort.abortable("lonely"):
            pytest.fail("the body must not run")  # pragma: no cover


async def test_closed_app_is_refused(sqlite_url: str) -> None:
    app = aioabort.App(sqlite_url)
    with pytest.raises(aioabort.AppClosed):
        await app.handle("x").state()
    async with app:
        pass
    with pytest.raises(aioabort.AppClosed):
        await app.handle("x").abort()
    with pytest.raises(aioabort.AppClosed):
        async with aioabort.abortable("x", app=app):
            pytest.fail("the body must not run")  # pragma: no cover


async def test_open_twice_is_refused(app: aioabort.App) -> None:
    with pytest.raises(aioabort.UsageError, match="already open"):
        await app.open()


async def test_bad_create_name(app: aioabort.App) -> None:
    with pytest.raises(aioabort.UsageError):
        await app.create("n", name="x" * 201)
    assert await app.tasks() == []


async def test_cancelled_abort_call_still_commits(app: aioabort.App) -> None:
    """abort() is shielded: cancelling the caller mid-write never loses a recorded request."""
    await app.create("shielded")
    call = asyncio.create_task(app.handle("shielded").abort("kept"))
    await asyncio.sleep(0)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    record = await app.handle("shielded").record()
    assert record.state is TaskState.ABORTED
    assert record.reason is not None and record.reason.message == "kept"


SECRET = "Zq9x7Lm-secret"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://alice:{SECRET}@127.0.0.1/db",
        f"postgresql://alice@127.0.0.1/db?password={SECRET}",
        f"postgresql://alice@127.0.0.1/db?sslmode=disable&PASSWORD={SECRET}&x=1",
        f"postgresql://alice@127.0.0.1/db?sslpassword={SECRET}",
        f"postgres://alice:{SECRET}@h1:5432,h2:5433/db",
    ],
)
def test_the_password_is_never_shown(url: str) -> None:
    app = aioabort.App(url)
    assert SECRET not in app.url and SECRET not in repr(app)
    assert "***" in app.url


@pytest.mark.parametrize("password", ["Zq9/x7Lm", "Zq9#x7Lm", "Zq9?x7Lm", "Zq9/x7?Lm#q"])
def test_unencoded_reserved_characters_in_the_password_are_refused(password: str) -> None:
    with pytest.raises(aioabort.InvalidURL, match="percent-encode") as info:
        aioabort.App(f"postgresql://alice:{password}@127.0.0.1:5432/db")
    assert "Zq9" not in str(info.value) and "x7" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is None


def test_a_port_that_is_not_a_number_is_refused_at_the_call() -> None:
    with pytest.raises(aioabort.InvalidURL, match="port"):
        aioabort.App("postgresql://alice@127.0.0.1:54x2/db")


def test_the_cli_never_prints_the_password(postgres_database: str) -> None:
    from urllib.parse import urlsplit, urlunsplit

    from .test_cli import run_cli

    parts = urlsplit(postgres_database)  # trust auth: any password is accepted
    netloc = f"{parts.username}:{SECRET}@{parts.hostname}:{parts.port}"
    url = urlunsplit(parts._replace(netloc=netloc, query=f"password={SECRET}2"))
    done = run_cli("--db", url, "db", "init")
    assert done.returncode == 0, done.stderr
    assert "store ready" in done.stdout
    assert SECRET not in done.stdout + done.stderr
    broken = run_cli("--db", f"postgresql://alice:{SECRET}/x@127.0.0.1/db", "tasks")
    assert broken.returncode != 0
    assert "percent-encode" in broken.stderr and "x7Lm" not in broken.stdout + broken.stderr


BAD_TEXT = ["nul\x00byte", "lone \ud800 surrogate"]


@pytest.mark.parametrize("bad", BAD_TEXT, ids=["nul", "surrogate"])
async def test_text_no_store_holds_is_refused_at_every_call(app: aioabort.App, bad: str) -> None:
    """Names, filters and progress messages are checked at the call, the same on every store
    (a NUL was a StoreError on PostgreSQL, a lone surrogate a raw UnicodeEncodeError on
    SQLite, and MemoryStore took both): InvalidText, nothing written."""

    async def job() -> None: ...

    with pytest.raises(aioabort.InvalidText, match="name"):
        await app.create("named", name=bad)
    with pytest.raises(aioabort.InvalidText, match="name"):
        async with aioabort.abortable("named", app=app, name=bad):
            pytest.fail("the body must not run")  # pragma: no cover
    with pytest.raises(aioabort.InvalidText, match="name"):
        app.task(name=bad)(job)
    with pytest.raises(aioabort.InvalidText, match="name"):
        await app.tasks(name=bad)
    with pytest.raises(aioabort.InvalidText, match="id_prefix"):
        await app.tasks(id_prefix=bad)
    with pytest.raises(aioabort.InvalidText, match="name"):
        await app.abort_many(name=bad)
    with pytest.raises(aioabort.UsageError, match="label"):
        await app.tasks(labels={"key": bad})
    async with aioabort.abortable("reporting", app=app) as scope:
        with pytest.raises(aioabort.InvalidText, match="progress message"):
            await scope.report(0.5, bad)
    assert [r.id for r in await app.tasks()] == ["reporting"]
    assert (await app.handle("reporting").record()).message is None


async def test_a_bad_name_fails_its_own_create_only(app: aioabort.App) -> None:
    """Creates that arrive together share one commit on the SQL stores: a bad name is
    refused at its own call, and the good creates beside it are written."""
    results = await asyncio.gather(
        app.create("good-1", name="fine"),
        app.create("bad", name="nul\x00"),
        app.create("good-2", name="fine"),
        return_exceptions=True,
    )
    assert isinstance(results[1], aioabort.InvalidText)
    assert [r.id for r in results if isinstance(r, aioabort.AbortHandle)] == ["good-1", "good-2"]
    assert sorted(r.id for r in await app.tasks()) == ["good-1", "good-2"]


async def test_text_in_arguments_and_results_is_json_on_every_store(app: aioabort.App) -> None:
    """A NUL inside arguments or a result is JSON (``\\u0000``): every store keeps it and
    gives it back. A lone surrogate is not valid text: refused as arguments, and a result
    holding one ends the task FAILURE (NotJSONSerializable)."""

    @app.task(name="echo")
    async def echo(text: str) -> str:
        return text

    @app.task(name="surrogate")
    async def surrogate() -> str:
        return "lone \ud800"

    handle = await echo.spawn("nul\x00byte")
    assert await handle.result(timeout=10) == "nul\x00byte"
    assert (await handle.record()).args == {"args": ["nul\x00byte"], "kwargs": {}}
    with pytest.raises(aioabort.NotJSONSerializable):
        await echo.delay("lone \ud800")
    with pytest.raises(aioabort.TaskFailed) as failed:
        await (await surrogate.spawn()).result(timeout=10)
    assert failed.value.error is not None and failed.value.error.type == "NotJSONSerializable"
