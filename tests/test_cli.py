"""The command line, through its real entry point (a subprocess) and through main()."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path

import pytest

import aioabort
from aioabort.cli import main

from ._processes import cli, environment, run, run_in_terminal


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run(cli(*args), env=environment(**(env or {})))


@pytest.fixture
def populated(sqlite_url: str) -> str:
    async def fill() -> None:
        async with aioabort.App(sqlite_url) as app:
            await app.create("pending-1", name="report")
            await app.create("pending-2", name="report")
            async with aioabort.abortable("done-1", name="export"):
                pass

    asyncio.run(fill())
    return sqlite_url


def test_help_lists_commands() -> None:
    out = run_cli("--help")
    assert out.returncode == 0
    for command in ("demo", "tasks", "show", "abort", "db"):
        assert command in out.stdout


def test_demo_runs_end_to_end_as_json() -> None:
    out = run_cli("demo", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["ok"] is True
    states = {t["id"]: t["state"] for t in data["tasks"]}
    assert states == {
        "report-1": "SUCCESS",
        "report-2": "ABORTED",
        "report-3": "ABORTED",
        "report-4": "SUCCESS",
        "report-5": "ABORTED",
    }
    by_id = {t["id"]: t for t in data["tasks"]}
    assert by_id["report-3"]["reason"]["by"] == "ops-console"
    assert by_id["report-5"]["started_at"] is None  # aborted while queued: never ran
    assert by_id["report-1"]["result"] == {"report": 1, "pages": 60}
    assert set(data["abort_seen_after_ms"]) == {"report-2", "report-3"}


def test_demo_plain_output_explains_itself() -> None:
    out = run_cli("demo", "--tasks", "4")
    assert out.returncode == 0, out.stderr
    assert "What happened" in out.stdout
    assert "ABORTED from another process" in out.stdout
    assert "ABORTED from this process" in out.stdout
    assert "never ran" in out.stdout


def test_tasks_json_and_filters(populated: str) -> None:
    out = run_cli("--db", populated, "tasks", "--json")
    assert out.returncode == 0, out.stderr
    assert {t["id"] for t in json.loads(out.stdout)} == {"pending-1", "pending-2", "done-1"}
    out = run_cli("--db", populated, "tasks", "--state", "success", "--json")
    assert [t["id"] for t in json.loads(out.stdout)] == ["done-1"]
    out = run_cli("tasks", "--name", "report", env={"AIOABORT_URL": populated})
    assert out.returncode == 0
    assert sorted(line.split()[0] for line in out.stdout.splitlines()) == [
        "pending-1",
        "pending-2",
    ]


def test_show(populated: str) -> None:
    out = run_cli("--db", populated, "show", "done-1", "--json")
    assert out.returncode == 0
    shown = json.loads(out.stdout)
    assert shown["state"] == "SUCCESS"
    assert [e["kind"] for e in shown["events"]][-1] == "ended"  # the timeline, oldest first
    assert shown["events"][-1]["detail"] == "SUCCESS"
    out = run_cli("--db", populated, "show", "done-1")
    assert "state" in out.stdout and "SUCCESS" in out.stdout
    assert "timeline" in out.stdout and "ended" in out.stdout
    out = run_cli("--db", populated, "show", "missing")
    assert out.returncode == 1
    assert "no task" in out.stderr


def test_abort_exit_codes(populated: str) -> None:
    assert main(["--db", populated, "abort", "pending-1", "--yes", "--reason", "cli"]) == 0
    assert main(["--db", populated, "abort", "pending-1", "--yes"]) == 2  # now ABORTED
    assert main(["--db", populated, "abort", "missing", "--yes"]) == 1
    assert main(["--db", populated, "abort", "done-1", "--yes"]) == 2

    async def check() -> aioabort.TaskRecord:
        async with aioabort.App(populated) as app:
            return await app.handle("pending-1").record()

    record = asyncio.run(check())
    assert record.state is aioabort.TaskState.ABORTED
    assert record.reason is not None and record.reason.message == "cli"


def test_abort_json_output(populated: str) -> None:
    out = run_cli("--db", populated, "abort", "pending-2", "missing", "--yes", "--json")
    assert out.returncode == 1
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert lines == [
        {"id": "pending-2", "outcome": "aborted", "state": "ABORTED"},
        {"id": "missing", "outcome": "not_found", "state": None},
    ]


def test_abort_needs_confirmation_without_a_terminal(populated: str) -> None:
    out = run_cli("--db", populated, "abort", "pending-2")
    assert out.returncode == 4
    assert "--yes" in out.stderr
    out = run_cli("--db", populated, "show", "pending-2", "--json")
    assert json.loads(out.stdout)["state"] == "PENDING"


def test_db_init_creates_the_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    out = run_cli("--db", url, "db", "init")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "fresh.db").exists()


def test_missing_and_bad_urls(tmp_path: Path) -> None:
    out = run(cli("tasks"), env=environment(without=["AIOABORT_URL"]))
    assert out.returncode == 2 and "AIOABORT_URL" in out.stderr
    out = run_cli("--db", "mysql://x/y", "tasks")
    assert out.returncode == 2 and "unknown store URL" in out.stderr
    out = run_cli("--db", f"sqlite:///{tmp_path}/no/such/dir.db", "tasks")
    assert out.returncode == 3 and "does not exist" in out.stderr


def test_passwords_never_printed() -> None:
    out = run_cli("--db", "mysql://user:hunter2@host/db", "tasks")
    assert "hunter2" not in out.stdout + out.stderr


HOSTILE = "\x1b]0;pwned\x07[/x] [bold red]boom\x1b[2J\x9b31m\u202eevil"
#: Ids refuse C0 controls, but may hold C1 controls, bidi overrides and markup.
HOSTILE_ID = "id-[/x]\x9b31m\u202eevil"


def run_cli_tty(*args: str, columns: int = 400) -> tuple[int, str]:
    """Run the CLI with its stdout on a pseudo-terminal (rich draws its table there)."""
    return run_in_terminal(cli(*args), columns=columns)


@pytest.fixture
def hostile(sqlite_url: str) -> str:
    """Records whose id, name, message and reason carry terminal escapes and rich markup."""

    async def fill() -> None:
        async with aioabort.App(sqlite_url) as app:
            await app.create(HOSTILE_ID, name=HOSTILE)
            async with aioabort.abortable("msg", name=HOSTILE, suppress=True) as scope:
                await scope.report(0.5, HOSTILE)
                await app.handle("msg").abort(HOSTILE)
                await asyncio.sleep(5)

    asyncio.run(fill())
    return sqlite_url


def assert_inert(output: str) -> None:
    for raw in ("\x1b]0;pwned", "\x07", "\x1b[2J", "\x9b", "\u202e"):
        assert raw not in output, (raw, output)
    assert "MarkupError" not in output and "Traceback" not in output


@pytest.mark.parametrize(
    "args",
    [("tasks",), ("show", "msg"), ("show", HOSTILE_ID), ("tasks", "--json")],
    ids=["tasks", "show", "show-hostile-id", "tasks-json"],
)
def test_record_text_never_drives_the_terminal(hostile: str, args: tuple[str, ...]) -> None:
    code, output = run_cli_tty("--db", hostile, *args)
    assert code == 0, output
    assert_inert(output)
    assert "\\x1b]0;pwned" in output or "\\u001b]0;pwned" in output  # shown, not sent
    if args[-1] == "--json":
        data = json.loads(output)
        assert any(record["name"] == HOSTILE for record in data)


def test_record_text_is_escaped_in_pipes_too(hostile: str) -> None:
    for args in (("tasks",), ("show", "msg"), ("abort", "--yes", HOSTILE_ID)):
        done = run_cli("--db", hostile, *args)
        assert done.returncode in (0, 2), done.stderr
        assert_inert(done.stdout + done.stderr)


def test_ids_found_by_label_are_escaped_too(tmp_path: Path) -> None:
    """``abort --label`` prints the ids it matched (the preview) and aborted: shown, not sent."""
    url = f"sqlite:///{tmp_path / 'hostile-labels.db'}"

    async def fill() -> None:
        async with aioabort.App(url) as app:

            @app.task(name="export")
            async def export() -> None: ...

            await export.apply(task_id=HOSTILE_ID, labels={"user": "mallory"})

    asyncio.run(fill())
    for args in (("--dry-run",), ("--yes",)):
        done = run_cli("--db", url, "abort", "--label", "user=mallory", *args)
        assert done.returncode == 0, done.stderr
        assert_inert(done.stdout + done.stderr)
        assert "\\x9b31m" in done.stdout


def test_db_is_taken_before_or_after_the_command(populated: str, tmp_path: Path) -> None:
    before = run_cli("--db", populated, "show", "done-1", "--json")
    after = run_cli("show", "done-1", "--json", "--db", populated)
    assert before.returncode == after.returncode == 0
    assert json.loads(before.stdout) == json.loads(after.stdout)
    # After the command it wins over the environment's (and the one before it).
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert run_cli("--db", other, "show", "done-1", "--db", populated).returncode == 0


def test_show_prints_json_values_not_python_reprs(populated: str) -> None:
    out = run_cli("--db", populated, "show", "done-1")
    lines = dict(line.split(None, 1) for line in out.stdout.splitlines() if line.strip())
    assert lines["retryable"].strip() == "false"
    assert "False" not in out.stdout and "None" not in out.stdout


def test_purge_command(populated: str) -> None:
    out = run_cli("--db", populated, "purge", "--older-than", "0s", "--yes", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["purged"] >= 1
    assert run_cli("--db", populated, "show", "done-1").returncode == 1  # gone
    assert run_cli("--db", populated, "show", "pending-1").returncode == 0  # queued: kept
    bad = run_cli("--db", populated, "purge", "--older-than", "soon", "--yes")
    assert bad.returncode == 2 and "not a duration" in bad.stderr


def test_abort_by_label_with_a_preview(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'labels.db'}"

    async def fill() -> None:
        async with aioabort.App(url) as app:

            @app.task(name="export")
            async def export() -> None: ...

            for i in range(3):
                await export.apply(task_id=f"alice-{i}", labels={"user": "alice"})
            await export.apply(task_id="bob-0", labels={"user": "bob"})

    asyncio.run(fill())
    preview = run_cli("--db", url, "abort", "--label", "user=alice", "--dry-run")
    assert preview.returncode == 0, preview.stderr
    assert sorted(preview.stdout.split()) == ["alice-0", "alice-1", "alice-2"]
    assert "3 task(s) match user=alice" in preview.stderr
    assert (
        json.loads(run_cli("--db", url, "show", "alice-0", "--json").stdout)["state"] == "PENDING"
    )
    refused = run_cli("--db", url, "abort", "--label", "user=alice")  # no tty, no --yes
    assert refused.returncode == 4
    done = run_cli("--db", url, "abort", "--label", "user=alice", "--yes", "--json")
    assert done.returncode == 0, done.stderr
    assert sorted(json.loads(line)["id"] for line in done.stdout.splitlines()) == [
        "alice-0",
        "alice-1",
        "alice-2",
    ]
    assert json.loads(run_cli("--db", url, "show", "bob-0", "--json").stdout)["state"] == "PENDING"
    assert run_cli("--db", url, "abort").returncode == 2  # neither IDs nor --label
    assert run_cli("--db", url, "abort", "x", "--label", "user=bob").returncode == 2
    assert run_cli("--db", url, "abort", "--label", "nokey").returncode == 2


def test_tasks_by_label_and_the_tasks_nobody_can_run(tmp_path: Path) -> None:
    """``tasks --label`` filters; queued tasks that no live worker registered are named in a
    warning on stderr (stdout stays the listing) and listed by ``tasks --unclaimed``."""
    url = f"sqlite:///{tmp_path / 'unclaimed.db'}"

    async def fill() -> None:
        async with aioabort.App(url) as app:

            @app.task(name="export.v2")
            async def export() -> None: ...

            await export.apply(task_id="alice-0", labels={"user": "alice"})
            await export.apply(task_id="bob-0", labels={"user": "bob"}, queue="bulk")

    asyncio.run(fill())
    listed = run_cli("--db", url, "tasks", "--label", "user=bob", "--unclaimed-after", "0s")
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines()] == ["bob-0"]
    assert "2 queued task(s) no live worker can run" in listed.stderr
    assert "export.v2 on default (1)" in listed.stderr
    assert "aioabort tasks --unclaimed" in listed.stderr
    quiet = run_cli("--db", url, "tasks", "--json")  # queued under a minute: no warning yet
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert len(json.loads(quiet.stdout)) == 2

    groups = run_cli("--db", url, "tasks", "--unclaimed", "--unclaimed-after", "0s", "--json")
    assert groups.returncode == 0, groups.stderr
    found = json.loads(groups.stdout)
    assert sorted((g["queue"], g["name"], g["count"]) for g in found) == [
        ("bulk", "export.v2", 1),
        ("default", "export.v2", 1),
    ]  # (queued in the same millisecond, perhaps: ties go by queue and name)
    text = run_cli("--db", url, "tasks", "--unclaimed", "--unclaimed-after", "0s")
    assert "export.v2  queue=bulk" in text.stdout
    assert run_cli("--db", url, "tasks", "--unclaimed", "--watch").returncode == 2
    none = run_cli("--db", url, "tasks", "--unclaimed")  # nothing has waited a minute
    assert none.returncode == 0 and "Every queued task" in none.stdout


def _shown_forms(tmp_path: Path) -> list[tuple[str, str]]:
    """(URL given, URL shown) for every SQLite form; the shown one is the one given."""
    absolute = f"sqlite:///{tmp_path / 'abs.db'}"  # sqlite:////tmp/...: four slashes
    return [
        ("sqlite:///relative.db", "sqlite:///relative.db"),
        ("sqlite:///sub/dir.db", "sqlite:///sub/dir.db"),
        (absolute, absolute),
        ("sqlite:///:memory:", "sqlite:///:memory:"),
        ("sqlite:///odd@name#1.db", "sqlite:///odd@name#1.db"),
    ]


async def _same_store(url: str) -> None:
    """A record written through ``App(url)`` is read through ``App(App(url).url)``."""
    shown = aioabort.App(url).url
    async with aioabort.App(url) as first:
        handle = await first.create(name="url")
        async with aioabort.App(shown) as second:
            if url.endswith(":memory:"):  # one store per App: only that it opens
                return
            assert (await second.handle(handle.id).record()).name == "url"


async def test_sqlite_urls_are_shown_as_given_and_open_the_same_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    for given, shown in _shown_forms(tmp_path):
        app = aioabort.App(given)
        assert app.url == shown and repr(app) == f"<aioabort.App url={shown!r} new>"
        await _same_store(given)


@pytest.mark.postgres
async def test_postgres_urls_round_trip_with_the_password_hidden(postgres_url: str) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(postgres_url)  # trust auth: any password is accepted
    secret = f"{parts.scheme}://{parts.username}:s3cr%2Ft@{parts.hostname}:{parts.port}"
    options = f"sslmode=disable&application_name=ops%20view&{parts.query}"
    with_password = f"{secret}{parts.path}?{options}&password=hunter2"
    assert aioabort.App(postgres_url).url == postgres_url  # the query's options are kept
    shown = aioabort.App(with_password).url
    assert "s3cr" not in shown and "hunter2" not in shown
    assert shown == (
        f"{parts.scheme}://{parts.username}:***@{parts.hostname}:{parts.port}{parts.path}"
        f"?{options}&password=***"
    )
    await _same_store(postgres_url)
    await _same_store(with_password)


def test_the_cli_shows_the_sqlite_url_it_was_given(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shown.db'}"
    out = run_cli("--db", url, "db", "init")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"store ready: {url}"
    relative = run(cli("--db", "sqlite:///here.db", "db", "init"), cwd=tmp_path)
    assert relative.stdout.strip() == "store ready: sqlite:///here.db", relative.stderr
    assert (tmp_path / "here.db").exists()


def test_purge_needs_confirmation_without_a_terminal(populated: str) -> None:
    """As ``abort`` does: exit 4 and a hint, nothing deleted."""
    out = run_cli("--db", populated, "purge", "--older-than", "0s")
    assert out.returncode == 4, out.stderr
    assert "refusing to purge without confirmation: pass --yes" in out.stderr
    assert run_cli("--db", populated, "show", "done-1").returncode == 0  # still there


@pytest.mark.parametrize("duration", ["99999999999d", f"{'9' * 400}s"])
def test_a_duration_too_long_is_a_usage_error(populated: str, duration: str) -> None:
    out = run_cli("--db", populated, "purge", "--older-than", duration, "--yes")
    assert out.returncode == 2, out.stderr
    assert "too long" in out.stderr and "Traceback" not in out.stderr
    out = run_cli("--db", populated, "tasks", "--unclaimed", "--unclaimed-after", duration)
    assert out.returncode == 2 and "too long" in out.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("tasks",),
        ("tasks", "--watch"),
        ("tasks", "--unclaimed"),
        ("show", "x"),
        ("show", "x", "--follow"),
        ("abort", "x", "--yes"),
        ("abort", "--label", "a=b", "--yes"),
        ("purge", "--older-than", "1d", "--yes"),
    ],
    ids=" ".join,
)
def test_a_mistyped_sqlite_path_is_refused_not_created(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    """Only ``db init``, ``worker`` and an App create a store file: the other commands refuse
    a path with no store (exit 3, as for a store they cannot reach) instead of answering from
    a new, empty one."""
    path = tmp_path / "typo.db"
    out = run_cli("--db", f"sqlite:///{path}", *args)
    assert out.returncode == 3, (out.stdout, out.stderr)
    assert f"no SQLite store at '{path}'" in out.stderr and "db init" in out.stderr
    assert "Traceback" not in out.stderr
    assert not path.exists()
    assert run_cli("--db", f"sqlite:///{path}", "db", "init").returncode == 0
    assert path.exists()


@pytest.mark.parametrize("progress", [False, True], ids=["no-progress", "progress"])
def test_the_table_never_wraps_an_id_in_a_100_column_terminal(
    sqlite_url: str, progress: bool
) -> None:
    """Ids are what operators copy: each stays whole on one line, and a column with nothing
    to show gives its width up."""

    async def fill() -> list[str]:
        async with aioabort.App(sqlite_url) as app:
            ids = [(await app.create(name="reports.monthly_export")).id for _ in range(3)]
            async with aioabort.abortable("f" * 32, name="reports.build", suppress=True) as scope:
                if progress:
                    await scope.report(0.4, "section 4 of 10")
                await app.handle(scope.id).abort("disk is filling up, try again later")
                await asyncio.sleep(5)
            return [*ids, scope.id]

    ids = asyncio.run(fill())
    code, output = run_cli_tty("--db", sqlite_url, "tasks", columns=100)
    assert code == 0, output
    lines = re.sub(r"\x1b\[[0-9;]*m", "", output).splitlines()  # without the colours
    assert all(len(line) <= 100 for line in lines), output
    for task_id in ids:
        assert any(task_id in line for line in lines), output
    assert ("PROGRESS" in output) is progress, output
