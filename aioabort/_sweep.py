"""The abort sweep: run a body once per suspension point, with a real abort landing there.

How the points are counted. The sweep runs the body in a task of its own and drives its
coroutine itself (``coro.send`` / ``coro.throw``, as the task would): each time the body's
coroutine yields to the event loop is one suspension point, whatever the await — the body's
own, or one deep inside a library it calls. Only the task running the body counts (the
tasks it starts run on their own), and only while its abort scope is open (entering and
leaving the scope is aioabort's work, not the body's). Driving the coroutine needs no hook in
the event loop, and the same body yields at the same points on every run.

How the abort lands at point k. When the body yields at point k, the sweep keeps it there:
instead of what the body awaits, the task waits on a gate while another task asks for the
abort through the App's store as production does (``handle.abort()``: the request commits,
then the scope open here is cancelled). The cancellation reaches the waiting task; the sweep
cancels what the body was awaiting and throws the cancellation into the body, where it
suspended, as ``Task.cancel()`` would. Inside a shielded section (``scope.cleanup()``,
``scope.to_thread``) nothing is cancelled: the body goes on waiting for what it awaited, and
the abort lands at its first await outside the shield, as in production.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import math
import types
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ._abortable import abortable
from ._app import App
from ._errors import TaskAborted, TaskNotFound, UsageError
from ._memory import MemoryStore
from ._progress import Progress
from ._scope import AbortScope, _current_scope
from ._state import TaskState
from ._sweep_asgi import AsgiRequest
from ._sweep_frames import (
    CodeRule,
    Started,
    current_run,
    location,
    task_name,
    unwatch_tasks,
    watch_tasks,
    where,
)
from ._sweep_report import SweepError, SweepReport, SweepRun, _count
from ._threads import thread_calls
from ._types import AbortReason

Body = Callable[[AbortScope], Awaitable[Any]]
Check = Callable[[SweepRun], object]


class Target(Protocol):
    """What a sweep runs: one run's coroutine, whose scope has the id it is given."""

    def run(self, app: App, task_id: str) -> Coroutine[Any, Any, object]: ...

    #: Why a run made no record (said when the sweep finds none).
    def without_scope(self) -> str: ...


@dataclass(frozen=True)
class _Body:
    body: Body

    async def run(self, app: App, task_id: str) -> object:
        result = None
        async with abortable(task_id, app=app, detached=True, name="abort_sweep") as scope:
            result = await self.body(scope)
        return result

    def without_scope(self) -> str:
        return "the run made no record"


@dataclass(eq=False)
class _Run:
    """One run: its count of suspension points and, when it aborts, the abort at its point."""

    task_id: str
    app: App
    rule: CodeRule
    started: Started
    outer: contextvars.Context
    target: int | None = None
    points: int = 0
    locations: list[str] = field(default_factory=list)
    aborted: bool = False
    reached: bool = False
    problem: str | None = None
    producer: asyncio.Task[None] | None = None

    def scope(self) -> AbortScope | None:
        """The run's scope, when it is open here (the body runs inside it)."""
        scope = _current_scope.get()
        while scope is not None:
            if scope.id == self.task_id:
                return scope
            scope = scope._enclosing
        return None

    def count(self, coro: Any, scope: AbortScope) -> bool:
        """One more suspension point; True when it is the one to abort at."""
        if self.points == 0:
            _every_report_writes(scope)
        self.points += 1
        if self.target is None or self.points <= self.target:
            self.locations.append(location(coro, self.rule))
        return self.points == self.target

    def hold(self, awaited: Any) -> Generator[Any, None, BaseException | None]:
        """Keep the body at this point while the abort is recorded and delivered; return the
        cancellation to throw into the body, or ``None`` when none came (a shield)."""
        loop = self.started.loop
        gate: asyncio.Future[None] = loop.create_future()
        self.aborted = True
        self.producer = loop.create_task(self._abort(gate), context=self.outer)
        try:
            yield from gate.__await__()
        except asyncio.CancelledError as exc:
            if isinstance(awaited, asyncio.Future) and not awaited.done():
                awaited.cancel(msg=exc.args[0] if exc.args else None)
            self.thrown(exc)
            return exc
        return None

    async def _abort(self, gate: asyncio.Future[None]) -> None:
        reason = AbortReason(AbortReason.USER, f"abort_sweep: point {self.target}", "abort_sweep")
        try:
            if not await self.app.handle(self.task_id).abort(reason):
                self.problem = "the store did not record the abort"
        except Exception as exc:  # noqa: BLE001 - reported as the run's failure
            self.problem = f"the abort could not be recorded: {_describe(exc)}"
        finally:
            if not gate.done():
                gate.set_result(None)

    def thrown(self, exc: BaseException) -> None:
        """Note when the abort's own cancellation is thrown into the body (not one of the
        body's own timeouts)."""
        if self.aborted and isinstance(exc, asyncio.CancelledError):
            scope = self.scope()
            if scope is not None and _cancels(exc, scope):
                self.reached = True


def _every_report_writes(scope: AbortScope) -> None:
    """Under the sweep each ``scope.report()`` writes (so each is a suspension point): its
    rate limit would make the points depend on the clock."""
    if scope._progress is not None:
        scope._progress._interval = 0.0
    elif scope._runtime is not None:
        scope._progress = Progress.of(scope._runtime, scope.id, 0.0)


def _cancels(exc: asyncio.CancelledError, scope: AbortScope) -> bool:
    """Whether ``exc`` is the cancellation of ``scope``'s abort: anyio names the cancel scope
    in the message (as it does to tell its own cancellations from others)."""
    if scope._cancel_scope is None:
        return False
    mark = f"Cancelled via cancel scope {id(scope._cancel_scope):x}"
    error: BaseException | None = exc
    while isinstance(error, asyncio.CancelledError):
        if error.args and isinstance(error.args[0], str) and error.args[0].startswith(mark):
            return True
        error = error.__context__
    return False


@types.coroutine
def _drive(run: _Run, coro: Coroutine[Any, Any, Any]) -> Generator[Any, Any, Any]:
    """Step ``coro`` as its task would, counting each time it yields inside the run's scope
    (and holding it at the run's point while the abort lands)."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            yielded = coro.send(value) if error is None else coro.throw(error)
        except StopIteration as stop:
            return stop.value
        value = error = None
        scope = run.scope()
        if scope is not None and run.count(coro, scope):
            error = yield from run.hold(yielded)
            if error is not None:
                continue
        try:
            value = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # noqa: BLE001 - thrown on into the body, as a task would
            error = exc
            run.thrown(exc)


@dataclass(frozen=True)
class _Ended:
    """How one run ended."""

    run: _Run
    exception: BaseException | None
    hung: bool
    state: TaskState | None
    error: str | None


class _Sweep:
    def __init__(
        self, target: Target, check: Check | None, app: App, timeout: float, rule: CodeRule
    ) -> None:
        self.target = target
        self.check = check
        self.app = app
        self.timeout = timeout
        self.rule = rule
        self.prefix = uuid.uuid4().hex[:12]
        self.outer = contextvars.copy_context()

    async def sweep(self) -> SweepReport:
        loop = asyncio.get_running_loop()
        watch_tasks(loop)
        try:
            clean = await self._clean("clean-1")
            again = await self._clean("clean-2")
            if again.locations != clean.locations:
                raise SweepError(_differs(clean.locations, again.locations))
            runs = [await self._at(point, clean.locations) for point in range(1, clean.points + 1)]
        finally:
            unwatch_tasks(loop)
        return SweepReport(clean.points, tuple(runs))

    async def _clean(self, label: str) -> _Run:
        """A run without an abort: it must end SUCCESS, leave nothing running, pass check."""
        ended = await self._execute(None, label)
        run = ended.run
        if ended.state is None:
            raise SweepError(f"a run without an abort: {self.target.without_scope()}")
        if ended.exception is not None or ended.state is not TaskState.SUCCESS:
            raise SweepError(
                "the body must end without an error when nothing aborts it; a run without an "
                f"abort {ended.error or f'ended {ended.state.value}'}"
            ) from ended.exception
        _, problem = await self._judge(SweepRun(0, "", ended.state, None, run.task_id), ended)
        if problem is not None:
            raise SweepError(f"a run without an abort already fails: {problem}")
        return run

    async def _at(self, point: int, clean: list[str]) -> SweepRun:
        ended = await self._execute(point, str(point))
        run = ended.run
        if run.points < point or run.locations != clean[:point]:
            raise SweepError(_differs(clean, run.locations, point))
        swept = SweepRun(point, clean[point - 1], ended.state, None, run.task_id)
        exc, problem = await self._judge(swept, ended)
        return SweepRun(point, swept.location, ended.state, problem, run.task_id, exc)

    async def _execute(self, point: int | None, label: str) -> _Ended:
        """One run in a task of its own, bounded by the timeout."""
        loop = asyncio.get_running_loop()
        task_id = f"abort-sweep-{self.prefix}-{label}"
        started = Started(self.rule, loop)
        run = _Run(task_id, self.app, self.rule, started, self.outer, point)
        context = self.outer.copy()
        context.run(current_run.set, started)
        context.run(thread_calls.set, started.track_thread)
        coro = self.target.run(self.app, task_id)
        task = loop.create_task(_drive(run, coro), context=context)
        hung = not await _finished(task, self.timeout)
        if hung:
            task.cancel()
            await _finished(task, self.timeout)
        if run.producer is not None:
            await _finished(run.producer, self.timeout)
        exception = None if not task.done() or task.cancelled() else task.exception()
        state, error = await self._outcome(run, exception, hung)
        return _Ended(run, exception, hung, state, error)

    async def _outcome(
        self, run: _Run, exc: BaseException | None, hung: bool
    ) -> tuple[TaskState | None, str | None]:
        """The run's end state, and what is wrong with how the body ended (or ``None``)."""
        try:
            record = await self.app.handle(run.task_id).record()
        except TaskNotFound:
            return None, self.target.without_scope()
        state = record.state
        if hung:
            return state, f"did not end within {self.timeout:g} s"
        own = isinstance(exc, TaskAborted) and exc.task_id == run.task_id
        if run.problem is not None:
            return state, run.problem
        if exc is not None and not own:
            return state, f"raised {_describe(exc)}{_raised_at(exc, self.rule)}"
        if state is TaskState.SUCCESS and run.reached:
            return (
                state,
                "did not stop: the cancellation was caught and the body returned (SUCCESS)",
            )
        if state is TaskState.FAILURE and record.error is not None:
            return state, f"ended FAILURE: {record.error.type}: {record.error.message}"
        if state not in (TaskState.ABORTED, TaskState.SUCCESS):
            return state, f"left its record {state.value}"
        return state, None

    async def _judge(
        self, swept: SweepRun, ended: _Ended
    ) -> tuple[BaseException | None, str | None]:
        """Everything wrong with a run that ended: how it ended, what it left running, what
        ``check`` says; then whatever it left running is stopped."""
        started = ended.run.started
        leaked = await _still_running(started, self.timeout)
        problems = [] if ended.error is None else [ended.error]
        if leaked:
            names = ", ".join(f"{task_name(task)} started at {at}" for task, at in leaked)
            problems.append(f"left {_count(len(leaked), 'task')} running: {names}")
        threads = sorted(started.threads.values())
        if threads:
            calls = _count(len(threads), "scope.to_thread call")
            problems.append(f"left {calls} running: {', '.join(threads)}")
        exc = ended.exception
        if self.check is not None and not ended.hung:
            try:
                checked = self.check(swept)
                if inspect.isawaitable(checked):
                    await asyncio.wait_for(checked, self.timeout)
            except Exception as failed:  # noqa: BLE001 - the user's invariant broke
                problems.append(f"check() raised {_describe(failed)}")
                exc = failed
        for task, _ in leaked:
            task.cancel()
        if leaked:
            await asyncio.wait([task for task, _ in leaked], timeout=self.timeout)
        await started.threads_done(self.timeout)
        return exc, "; ".join(problems) or None


async def _finished(task: asyncio.Future[Any], timeout: float) -> bool:
    """Wait up to ``timeout`` for ``task``; whether it is done. A cancelled sweep cancels it."""
    try:
        await asyncio.wait((task,), timeout=timeout)
    except BaseException:
        task.cancel()
        raise
    return task.done()


async def _still_running(started: Started, timeout: float) -> list[tuple[asyncio.Task[Any], str]]:
    """The tasks the body started that still run: those it cancelled get ``timeout`` to end
    (a cancel it did not wait for is not a leak; one that is ignored is)."""
    running = [(task, at) for task, at in started.tasks if not task.done()]
    stopping = [task for task, _ in running if task.cancelling()]
    if stopping:
        await asyncio.wait(stopping, timeout=timeout)
    return [(task, at) for task, at in running if not task.done()]


def _describe(exc: BaseException) -> str:
    """``Type: message``, the message's first line only (a report has one line per run;
    pytest adds its assertion's explanation on the lines after; ``run.exception`` has all)."""
    text = str(exc).split("\n", 1)[0]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _raised_at(exc: BaseException, rule: CodeRule) -> str:
    """`` at file.py:LINE``: the last frame of the body's code the exception came through."""
    tb, found = exc.__traceback__, ""
    while tb is not None:
        if rule.is_user(tb.tb_frame.f_code.co_filename):
            found = f" at {where(tb.tb_frame).rsplit(':', 1)[0]}:{tb.tb_lineno}"
        tb = tb.tb_next
    return found


def _differs(clean: list[str], other: list[str], point: int | None = None) -> str:
    """The error of a body that does not suspend at the same points on every run."""
    first = next(
        (i for i, (a, b) in enumerate(zip(clean, other, strict=False)) if a != b),
        min(len(clean), len(other)),
    )
    if point is not None and len(other) < point and first == len(other):
        seen = f"the run aborted at point {point} ended after {len(other)} suspension points"
    elif first < len(clean) and first < len(other):
        seen = (
            f"suspension point {first + 1} was at {clean[first]} in the first run "
            f"and at {other[first]} in another"
        )
    else:
        seen = f"one run suspended {len(clean)} times, another {len(other)} times"
    return (
        f"the body does not suspend at the same points on every run ({seen}): it must not "
        "branch on time, randomness or outside state, so that each abort lands where it did"
    )


def _check_body(body: object) -> None:
    call = getattr(body, "__call__", None)  # noqa: B004 - an object with an async __call__
    async_callable = inspect.iscoroutinefunction(body) or inspect.iscoroutinefunction(call)
    if not async_callable:
        raise UsageError(
            f"abort_sweep() needs an async callable taking the scope (an `async def "
            f"body(scope)`), got {body!r}"
        )


def _check_arguments(check: object, app: object, timeout: object) -> float:
    if check is not None and not callable(check):
        raise UsageError(f"check must be a callable taking the run, or None, got {check!r}")
    if app is not None and not isinstance(app, App):
        raise UsageError(f"app must be an aioabort.App, got {app!r}")
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout < math.inf
    ):
        raise UsageError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


async def sweep(
    target: Target,
    check: Check | None,
    app: App | None,
    timeout: float,
    rule: CodeRule,
) -> SweepReport:
    """Run :class:`_Sweep` over ``target`` with ``app`` open (one on a MemoryStore if
    ``app`` is None); an App the sweep opened is closed again."""
    own = app if app is not None else App(store=MemoryStore())
    opened = not own.is_open
    if opened:
        await own.open()
    try:
        return await _Sweep(target, check, own, timeout, rule).sweep()
    finally:
        if opened:
            await own.aclose()


async def abort_sweep(
    body: Body | AsgiRequest,
    check: Check | None = None,
    app: App | None = None,
    timeout: float = 10.0,
) -> SweepReport:
    """Abort ``body`` at each of its suspension points in turn; report what broke.

    The sweep runs ``body(scope)`` inside an abort scope once without an abort and counts the
    times it suspends (each time its task yields to the event loop, in the body's own awaits
    or in the libraries it calls; twice, to be sure the count does not vary). Then, for each
    point k, it runs the body again and aborts it through the store exactly at point k: the
    body sees what a production abort gives, the same cancellation, reason and end write.
    Each run passes when the body stopped (its record ``ABORTED``) without another
    exception, left no task and no ``scope.to_thread`` call running, and ``check(run)``
    passed. A run whose abort landed in a shielded section the body then left without
    awaiting again ends ``SUCCESS``, as production records it, and passes too.

    Example::

        async def body(scope):
            async with open_export(path) as out:   # must remove path when aborted
                for row in rows:
                    await out.write(row)

        def check(run):
            assert not path.exists(), "the partial export was left behind"

        report = await abort_sweep(body, check=check)
        report.raise_for_failures()

    :param body: an ``async def`` taking the scope (or :func:`asgi_request`, to sweep a
        request through the web middleware). It must suspend at the same points on every
        run: no branching on time or randomness.
    :param check: called with each :class:`SweepRun` after the run (sync or async): your
        invariant (a file gone, a lock free, a row rolled back); it raises when it breaks.
        It is also called after the run without an abort.
    :param app: the App whose store carries the aborts (opened for the sweep if it is not
        open); by default one on a new :class:`MemoryStore`. Each run is a task of its own
        there (``run.task_id``).
    :param timeout: seconds each run (and each check) may take; a run that takes longer hung.
    :raises UsageError: for a body that is not an async callable, or bad arguments.
    :raises SweepError: when the run without an abort fails, hangs or breaks ``check``, or
        the body does not suspend at the same points on every run.
    """
    limit = _check_arguments(check, app, timeout)
    target: Target
    if isinstance(body, AsgiRequest):
        if app is None:
            raise UsageError("sweeping a request needs app=: the App its AbortMiddleware was given")
        target = body
    else:
        _check_body(body)
        target = _Body(body)
    return await sweep(target, check, app, limit, CodeRule())
