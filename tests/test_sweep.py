"""The abort sweep: a real abort at each suspension point of a body, and what it finds."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import aioabort
from aioabort.testing import (
    MemoryStore,
    SweepError,
    SweepReport,
    SweepRun,
    abort_sweep,
    asgi_request,
)

HERE = Path(__file__).read_text("utf-8").splitlines()


def at(marker: str) -> str:
    """``test_sweep.py:LINE`` of the line of this file that carries ``# <marker>``."""
    lines = [n for n, text in enumerate(HERE, start=1) if text.endswith(f"# {marker}")]
    assert len(lines) == 1, marker
    return f"test_sweep.py:{lines[0]}"


class Export:
    """A resource with a cleanup that matters: a partial file that must not be left behind."""

    def __init__(self, directory: Path) -> None:
        self.part = directory / "export.csv.part"
        self.done = directory / "export.csv"

    def check(self, run: SweepRun) -> None:
        assert not self.part.exists(), f"{self.part.name} left behind"

    def reset(self) -> None:
        self.done.unlink(missing_ok=True)


async def write_rows(part: Path, rows: int) -> None:
    for i in range(rows):
        with part.open("a") as out:
            out.write(f"row {i}\n")
        await asyncio.sleep(0)  # leak: write


async def leaky_export(scope: aioabort.AbortScope, export: Export) -> None:
    export.part.write_text("")
    await asyncio.sleep(0)  # leak: open
    await write_rows(export.part, 2)
    export.part.rename(export.done)
    await asyncio.sleep(0)  # leak: after


async def fixed_export(scope: aioabort.AbortScope, export: Export) -> None:
    export.part.write_text("")
    try:
        await asyncio.sleep(0)
        await write_rows(export.part, 2)
    except BaseException:
        export.part.unlink()
        raise
    export.part.rename(export.done)
    await asyncio.sleep(0)


def body_of(
    fn: Callable[[aioabort.AbortScope, Export], Any], export: Export
) -> Callable[[aioabort.AbortScope], Any]:
    async def body(scope: aioabort.AbortScope) -> None:
        export.reset()
        await fn(scope, export)

    return body


async def test_a_planted_leak_fails_at_each_point_it_leaks_named_at_its_line(
    tmp_path: Path,
) -> None:
    export = Export(tmp_path)
    report = await abort_sweep(body_of(leaky_export, export), check=export.check)

    assert report.points == 4
    assert [run.location for run in report.runs] == [
        at("leak: open"),
        at("leak: write"),
        at("leak: write"),
        at("leak: after"),
    ]
    assert [run.point for run in report.failures] == [1, 2, 3]
    assert all(run.state is aioabort.TaskState.ABORTED for run in report.runs)
    assert {run.error for run in report.failures} == {
        "check() raised AssertionError: export.csv.part left behind"
    }
    assert not report.ok
    with pytest.raises(AssertionError) as info:
        report.raise_for_failures()
    left = "check() raised AssertionError: export.csv.part left behind"
    assert str(info.value).splitlines() == [
        "abort_sweep: 3 of 4 points failed:",
        f"  point 1 at {at('leak: open')}: {left}",
        f"  point 2 at {at('leak: write')}: {left}",
        f"  point 3 at {at('leak: write')}: {left}",
    ]


async def test_the_fixed_body_passes_with_the_same_point_count(tmp_path: Path) -> None:
    export = Export(tmp_path)
    report = await abort_sweep(body_of(fixed_export, export), check=export.check)
    assert report.points == 4 and report.ok and report.failures == ()
    report.raise_for_failures()
    assert str(report).splitlines()[0] == "abort_sweep: 4 suspension points, no failures"


async def test_each_run_is_a_real_abort_through_the_store_with_its_reason() -> None:
    seen: list[tuple[str, str | None]] = []

    async def body(scope: aioabort.AbortScope) -> None:
        try:
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            assert scope.reason is not None
            seen.append((scope.reason.code, scope.reason.message))
            raise

    async with aioabort.App(store=MemoryStore()) as app:
        report = await abort_sweep(body, app=app)
        records = [await app.handle(run.task_id).record() for run in report.runs]
    assert report.ok and report.points == 2
    assert seen == [("user", "abort_sweep: point 1"), ("user", "abort_sweep: point 2")]
    assert [record.state for record in records] == [aioabort.TaskState.ABORTED] * 2
    assert all(
        record.reason is not None and record.reason.by == "abort_sweep" for record in records
    )


async def test_a_body_that_swallows_the_cancellation_is_reported() -> None:
    async def swallower(scope: aioabort.AbortScope) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0)  # swallowed here

    report = await abort_sweep(swallower)
    assert report.points == 1
    (run,) = report.failures
    assert run.location == at("swallowed here")
    assert run.state is aioabort.TaskState.SUCCESS
    assert run.error == "did not stop: the cancellation was caught and the body returned (SUCCESS)"


async def test_a_body_that_swallows_once_is_cancelled_again_and_passes() -> None:
    async def swallows_once(scope: aioabort.AbortScope) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0)
        await asyncio.sleep(0)  # cancelled again here: level-triggered

    report = await abort_sweep(swallows_once)
    assert report.ok and report.points == 2


async def sleep_long() -> None:
    await asyncio.sleep(3600)


async def test_a_task_left_running_is_reported_with_where_it_started() -> None:
    async def leaves_a_task(scope: aioabort.AbortScope) -> None:
        heartbeat = asyncio.create_task(sleep_long())  # started here
        await asyncio.sleep(0)
        heartbeat.cancel()

    report = await abort_sweep(leaves_a_task)
    assert report.points == 1
    assert report.runs[0].error == (
        f"left 1 task running: sleep_long() started at {at('started here')}"
    )


async def test_a_task_the_body_cancelled_is_not_a_leak() -> None:
    async def cancels_its_task(scope: aioabort.AbortScope) -> None:
        heartbeat = asyncio.create_task(sleep_long())
        try:
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        finally:
            heartbeat.cancel()  # not awaited: it ends at its next step

    report = await abort_sweep(cancels_its_task)
    assert report.ok and report.points == 2


async def test_a_to_thread_call_left_running_is_reported() -> None:
    release = threading.Event()

    async def leaves_a_thread(scope: aioabort.AbortScope) -> None:
        release.clear()
        loop, entered = asyncio.get_running_loop(), asyncio.Event()

        def blocked() -> None:
            loop.call_soon_threadsafe(entered.set)
            release.wait(10)

        worker = asyncio.create_task(scope.to_thread(blocked))  # thread task
        try:
            await asyncio.sleep(0)
        except BaseException:
            async with scope.cleanup():
                await entered.wait()  # the thread runs; then the body forgets it
            raise
        release.set()
        await worker

    report = await abort_sweep(leaves_a_thread, check=lambda run: release.set())
    assert report.points == 2
    assert [run.point for run in report.failures] == [1]
    thread = "test_a_to_thread_call_left_running_is_reported.<locals>.leaves_a_thread.<locals>"
    task = f"left 1 task running: AbortScope.to_thread() started at {at('thread task')}"
    assert {run.error for run in report.failures} == {
        f"{task}; left 1 scope.to_thread call running: {thread}.blocked"
    }


async def test_aborts_inside_a_shield_land_at_the_next_await_or_not_at_all() -> None:
    def work() -> int:
        return 1

    async def ends_in_a_thread(scope: aioabort.AbortScope) -> None:
        await asyncio.sleep(0)  # before the thread
        await scope.to_thread(work)

    report = await abort_sweep(ends_in_a_thread)
    assert report.ok
    assert report.runs[0].state is aioabort.TaskState.ABORTED
    # the abort lands in the thread's shield and the body ends without another await
    assert report.runs[-1].state is aioabort.TaskState.SUCCESS
    assert report.runs[-1].error is None


async def test_another_exception_is_reported_with_where_it_was_raised() -> None:
    async def converts(scope: aioabort.AbortScope) -> None:
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise RuntimeError("stopped") from None  # raised here

    report = await abort_sweep(converts)
    (run,) = report.failures
    assert run.state is aioabort.TaskState.FAILURE
    assert run.error == f"raised RuntimeError: stopped at {at('raised here')}"
    assert isinstance(run.exception, RuntimeError)


async def test_a_cleanup_that_hangs_is_bounded_by_the_timeout() -> None:
    async def hangs(scope: aioabort.AbortScope) -> None:
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            async with scope.cleanup(timeout=3600):
                await asyncio.Event().wait()
            raise

    report = await abort_sweep(hangs, timeout=0.2)
    (run,) = report.failures
    assert run.error == "did not end within 0.2 s"


async def test_a_body_that_hangs_without_an_abort_cannot_be_swept() -> None:
    async def hangs(scope: aioabort.AbortScope) -> None:
        await asyncio.Event().wait()

    with pytest.raises(SweepError, match=r"a run without an abort did not end within 0\.2 s"):
        await abort_sweep(hangs, timeout=0.2)


async def test_a_check_is_sync_or_async_and_must_pass_without_an_abort() -> None:
    runs: list[int] = []

    async def body(scope: aioabort.AbortScope) -> None:
        await asyncio.sleep(0)

    async def async_check(run: SweepRun) -> None:
        await asyncio.sleep(0)
        runs.append(run.point)

    assert (await abort_sweep(body, check=async_check)).ok
    assert runs == [0, 0, 1]

    def always_fails(run: SweepRun) -> None:
        raise AssertionError("never holds")

    with pytest.raises(SweepError, match=r"without an abort already fails: check\(\) raised"):
        await abort_sweep(body, check=always_fails)


async def test_a_body_with_no_suspension_point_says_so() -> None:
    async def never_awaits(scope: aioabort.AbortScope) -> int:
        return 1

    report = await abort_sweep(never_awaits)
    assert (report.points, report.runs, report.ok) == (0, (), False)
    assert "never suspended (0 suspension points)" in str(report)
    with pytest.raises(AssertionError, match="nothing was tested"):
        report.raise_for_failures()


async def test_a_body_that_does_not_suspend_the_same_way_each_run_is_an_error() -> None:
    calls = 0

    async def grows(scope: aioabort.AbortScope) -> None:
        nonlocal calls
        calls += 1
        for _ in range(calls):
            await asyncio.sleep(0)

    with pytest.raises(SweepError, match="one run suspended 1 times, another 2 times"):
        await abort_sweep(grows)

    later = 0

    async def changes_later(scope: aioabort.AbortScope) -> None:
        nonlocal later
        later += 1
        await asyncio.sleep(0)
        if later > 2:
            await asyncio.sleep(0)  # only from the third run on
        await asyncio.sleep(0)

    with pytest.raises(SweepError, match=r"suspension point 2 was at test_sweep\.py"):
        await abort_sweep(changes_later)


async def test_the_same_body_gives_the_same_report_every_time(tmp_path: Path) -> None:
    export = Export(tmp_path)
    first = await abort_sweep(body_of(leaky_export, export), check=export.check)
    second = await abort_sweep(body_of(leaky_export, export), check=export.check)
    assert first == second
    assert str(first) == str(second)


@pytest.mark.parametrize(
    "body",
    [
        lambda scope: asyncio.sleep(0),
        print,
        "not callable",
        None,
    ],
)
async def test_a_body_that_is_not_an_async_callable_is_a_usage_error(body: Any) -> None:
    with pytest.raises(aioabort.UsageError, match="needs an async callable"):
        await abort_sweep(body)


async def test_bad_arguments_are_usage_errors() -> None:
    async def body(scope: aioabort.AbortScope) -> None:
        await asyncio.sleep(0)

    cases: list[tuple[dict[str, Any], str]] = [
        ({"check": 1}, "check must be a callable"),
        ({"app": "sqlite:///x.db"}, "app must be an aioabort.App"),
        ({"timeout": 0}, "timeout must be a positive number"),
        ({"timeout": True}, "timeout must be a positive number"),
        ({"timeout": float("inf")}, "timeout must be a positive number"),
    ]
    for kwargs, message in cases:
        with pytest.raises(aioabort.UsageError, match=message):
            await abort_sweep(body, **kwargs)
    with pytest.raises(aioabort.UsageError, match="needs app="):
        await abort_sweep(asgi_request(_never_called))
    with pytest.raises(aioabort.UsageError, match="must start with '/'"):
        asgi_request(_never_called, "GET", "x")


async def _never_called(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("not called")


async def test_an_object_with_an_async_call_and_a_partial_are_bodies() -> None:
    class Body:
        async def __call__(self, scope: aioabort.AbortScope) -> None:
            await asyncio.sleep(0)

    async def two(scope: aioabort.AbortScope, n: int) -> None:
        for _ in range(n):
            await asyncio.sleep(0)

    import functools

    assert (await abort_sweep(Body())).points == 1
    assert (await abort_sweep(functools.partial(two, n=2))).points == 2


async def test_points_count_inside_libraries_and_name_the_callers_line() -> None:
    import anyio.lowlevel

    lock = asyncio.Lock()

    async def body(scope: aioabort.AbortScope) -> None:
        async with lock:
            await anyio.lowlevel.checkpoint()  # library await

    report = await abort_sweep(body, check=lambda run: _free(lock))
    assert report.ok and report.points == 1
    assert {run.location for run in report.runs} == {at("library await")}


def _free(lock: asyncio.Lock) -> None:
    assert not lock.locked(), "lock still held"


async def test_the_sweep_leaves_the_loops_task_factory_as_it_was() -> None:
    loop = asyncio.get_running_loop()
    before = loop.get_task_factory()

    async def body(scope: aioabort.AbortScope) -> None:
        await asyncio.sleep(0)

    await asyncio.gather(abort_sweep(body), abort_sweep(body))
    assert loop.get_task_factory() is before


async def test_nested_scopes_are_aborted_with_the_body() -> None:
    async def body(scope: aioabort.AbortScope) -> None:
        async with aioabort.abortable(f"{scope.id}-child") as child:  # child scope
            await asyncio.sleep(0)
            await child.checkpoint()

    report = await abort_sweep(body)
    assert report.ok and report.points == 4  # the child's start and end writes are points too
    assert [run.location for run in report.runs][::3] == [at("child scope")] * 2
    assert [run.state for run in report.runs] == [aioabort.TaskState.ABORTED] * 3 + [
        aioabort.TaskState.SUCCESS  # the abort landed in the child's shielded end write
    ]


async def test_a_report_reads_as_a_table() -> None:
    report = SweepReport(
        2,
        (
            SweepRun(1, "a.py:1", aioabort.TaskState.ABORTED, None, "t1"),
            SweepRun(2, "long.py:20", aioabort.TaskState.SUCCESS, "did not stop", "t2"),
        ),
    )
    assert str(report).splitlines() == [
        "abort_sweep: 2 suspension points, 1 failure",
        "  point 1   a.py:1      ABORTED  ok",
        "  point 2   long.py:20  SUCCESS  FAILED: did not stop",
    ]


# -- on every store ---------------------------------------------------------------------------


async def test_app_sweeps_against_a_real_store(app: aioabort.App, tmp_path: Path) -> None:
    export = Export(tmp_path)
    report = await abort_sweep(body_of(leaky_export, export), check=export.check, app=app)
    on_memory = await abort_sweep(body_of(leaky_export, export), check=export.check)
    assert report == on_memory
    assert [run.point for run in report.failures] == [1, 2, 3]
    assert await app.handle(report.runs[0].task_id).state() is aioabort.TaskState.ABORTED
    assert app.is_open


async def test_an_app_that_is_not_open_is_opened_for_the_sweep_and_closed(tmp_path: Path) -> None:
    app = aioabort.App(f"sqlite:///{tmp_path / 'sweep.db'}")

    async def body(scope: aioabort.AbortScope) -> None:
        await scope.report(0.5)
        await asyncio.sleep(0)

    report = await abort_sweep(body, app=app)
    assert report.ok and report.points >= 1
    assert not app.is_open


# -- web handlers through the middleware -----------------------------------------------------


def make_api(aborts: aioabort.App, held: set[str], *, fixed: bool) -> Any:
    from fastapi import FastAPI

    from aioabort.web import AbortMiddleware

    api = FastAPI()
    api.add_middleware(AbortMiddleware, aborts=aborts)

    @api.post("/exports")
    async def export() -> dict[str, bool]:
        held.add("lock")
        try:
            await asyncio.sleep(0)  # handler await
            await asyncio.sleep(0)
        finally:
            if fixed:
                held.discard("lock")
        held.discard("lock")
        return {"ok": True}

    return api


@pytest.mark.parametrize("fixed", [False, True])
async def test_a_web_handler_is_swept_through_the_middleware(fixed: bool) -> None:
    held: set[str] = set()
    aborts = aioabort.App(store=MemoryStore())
    api = make_api(aborts, held, fixed=fixed)

    def check(run: SweepRun) -> None:
        try:
            assert not held, "the handler's lock is still held"
        finally:
            held.clear()

    report = await abort_sweep(asgi_request(api, "POST", "/exports"), check=check, app=aborts)
    assert report.points == 2
    assert report.runs[0].location == at("handler await")
    assert all(run.state is aioabort.TaskState.ABORTED for run in report.runs)
    assert report.ok is fixed
    if not fixed:
        assert {run.error for run in report.runs} == {
            "check() raised AssertionError: the handler's lock is still held"
        }


async def test_a_request_that_never_reaches_a_scope_is_a_clear_error() -> None:
    from fastapi import FastAPI

    api = FastAPI()

    @api.get("/")
    async def index() -> None:
        await asyncio.sleep(0)

    with pytest.raises(SweepError, match="add AbortMiddleware to the application"):
        await abort_sweep(asgi_request(api), app=aioabort.App(store=MemoryStore()))


def test_the_sweep_is_public_in_aioabort_testing() -> None:
    import aioabort.testing

    for name in aioabort.testing.__all__:
        assert getattr(aioabort.testing, name).__module__ == "aioabort.testing", name
    assert time.monotonic() > 0


# -- the docs ---------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def test_the_docs_show_the_reports_the_example_prints(tmp_path: Path) -> None:
    """docs/testing.md shows the reports of docs/examples/sweep_export.py verbatim: they are
    what a run of it prints."""
    import re
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "examples" / "sweep_export.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    page = (ROOT / "docs" / "testing.md").read_text("utf-8")
    shown = re.findall(r"^```text\n(abort_sweep:.*?)^```", page, re.DOTALL | re.MULTILINE)
    assert len(shown) == 3
    assert "".join(shown) == done.stdout


async def test_every_report_is_a_point_under_the_sweep() -> None:
    """scope.report() writes at most every 0.25 s, which would make the points depend on the
    clock; under the sweep each report writes, so each is a point, on every run."""

    async def reports(scope: aioabort.AbortScope) -> None:
        for i in range(5):
            await scope.report((i + 1) / 5)  # report
            await asyncio.sleep(0)

    async with aioabort.App(store=MemoryStore()) as app:
        report = await abort_sweep(reports, app=app)
        last = await app.handle(report.runs[-1].task_id).record()
    assert report.ok and report.points == 10
    assert [run.location for run in report.runs][::2] == [at("report")] * 5
    assert last.progress == 1.0


async def test_a_task_group_the_body_waits_for_leaves_nothing_running() -> None:
    async def child(steps: int) -> None:
        for _ in range(steps):
            await asyncio.sleep(0)

    async def body(scope: aioabort.AbortScope) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(child(3))
            group.create_task(child(2))
            await asyncio.sleep(0)  # in the group
        await asyncio.sleep(0)

    report = await abort_sweep(body)
    assert report.ok and report.points == 3
    assert report.runs[0].location == at("in the group")
