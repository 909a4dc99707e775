"""Property tests (hypothesis): the stores against the pure state machine, and hostile input.

The model-based test drives two or three stores on one database (each its own owner, as
processes would be) through random interleavings of create / start / abort / report / finish /
requeue / crash-and-reap, and checks after every step that the records equal what the pure
rules in ``aioabort._state`` say: terminal states never change, the first reason wins, only
the owner ends a running task, a dead owner's tasks do not stay STARTED.
"""

from __future__ import annotations

import asyncio
import json
import math
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import aioabort
from aioabort import AbortReason, TaskState
from aioabort._backend import Store
from aioabort._state import (
    RUNNING_STATES,
    StartDecision,
    after_abort_request,
    decide_start,
)
from aioabort.backends import store_factory

IDS = ["a", "b", "c", "d"]


@dataclass
class Model:
    state: TaskState
    owner: str | None = None
    reason: str | None = None
    started: bool = False
    progress: float | None = None
    history: list[TaskState] = field(default_factory=list)


class StoreMachine(RuleBasedStateMachine):
    url_maker: Any = None  # set by the test: () -> a fresh store URL

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.stores: list[Store] = []
        self.owners: list[str] = []
        self.model: dict[str, Model] = {}
        self.dead: set[int] = set()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    @initialize(count=st.integers(min_value=2, max_value=3))
    def open_stores(self, count: int) -> None:
        url = type(self).url_maker()
        for _ in range(count):
            store = store_factory(url)(None)
            self.run(store.open())
            owner = uuid.uuid4().hex
            self.run(store.heartbeat(aioabort._backend.OwnerInfo(owner, "test", 1)))
            self.stores.append(store)
            self.owners.append(owner)

    def teardown(self) -> None:
        for store in self.stores:
            self.run(store.aclose())
        self.loop.close()

    def alive(self, k: int) -> bool:
        return k not in self.dead

    # -- rules -------------------------------------------------------------------------------

    @rule(task_id=st.sampled_from(IDS), k=st.integers(0, 2))
    def create(self, task_id: str, k: int) -> None:
        store = self.stores[k % len(self.stores)]
        if task_id in self.model:
            with pytest.raises(aioabort.TaskAlreadyExists):
                self.run(store.create(task_id, name="m"))
            return
        record = self.run(store.create(task_id, name="m"))
        assert record.state is TaskState.PENDING
        self.model[task_id] = Model(TaskState.PENDING)

    @rule(task_id=st.sampled_from(IDS), k=st.integers(0, 2))
    def start(self, task_id: str, k: int) -> None:
        k %= len(self.stores)
        if not self.alive(k):
            return
        current = self.model.get(task_id)
        expected = decide_start(
            None if current is None else current.state,
            ever_started=current is not None and current.started,
        )
        result = self.run(self.stores[k].start(task_id, owner=self.owners[k], name="m"))
        assert result.decision is expected
        if expected in (StartDecision.CREATE, StartDecision.START):
            model = current or Model(TaskState.STARTED)
            model.state, model.owner, model.started = TaskState.STARTED, self.owners[k], True
            self.model[task_id] = model

    @rule(task_id=st.sampled_from(IDS), k=st.integers(0, 2), message=st.text(max_size=20))
    def abort(self, task_id: str, k: int, message: str) -> None:
        message = message.replace("\x00", "")
        reason = AbortReason("user", message, by=f"store-{k}")
        outcome = self.run(self.stores[k % len(self.stores)].request_abort(task_id, reason))
        current = self.model.get(task_id)
        if current is None:
            assert outcome.recorded is False and outcome.record is None
            return
        target = after_abort_request(current.state)
        assert outcome.recorded is (target is not None)
        if target is not None:
            current.state = target
            current.reason = message
            current.history.append(target)

    @rule(
        task_id=st.sampled_from(IDS),
        k=st.integers(0, 2),
        end=st.sampled_from([TaskState.SUCCESS, TaskState.FAILURE, TaskState.ABORTED]),
    )
    def finish(self, task_id: str, k: int, end: TaskState) -> None:
        k %= len(self.stores)
        record = self.run(self.stores[k].finish(task_id, owner=self.owners[k], state=end))
        current = self.model.get(task_id)
        if current is None:
            assert record is None
            return
        if current.state in RUNNING_STATES and current.owner == self.owners[k]:
            current.state = end
        assert record is not None and record.state is current.state

    @rule(
        task_id=st.sampled_from(IDS), k=st.integers(0, 2), progress=st.floats(0, 1, allow_nan=False)
    )
    def report(self, task_id: str, k: int, progress: float) -> None:
        k %= len(self.stores)
        wrote = self.run(
            self.stores[k].report(task_id, owner=self.owners[k], progress=progress, message=None)
        )
        current = self.model.get(task_id)
        allowed = (
            current is not None
            and current.state in RUNNING_STATES
            and current.owner == self.owners[k]
        )
        assert wrote is allowed
        if allowed and current is not None:
            current.progress = progress

    @precondition(lambda self: len(self.dead) < len(self.stores) - 1)
    @rule(k=st.integers(0, 2))
    def crash_and_reap(self, k: int) -> None:
        """Owner k dies; another store's reaper ends its running tasks as lost."""
        k %= len(self.stores)
        if not self.alive(k):
            return
        self.dead.add(k)
        reaper = next(i for i in range(len(self.stores)) if self.alive(i))
        ids = self.run(self.stores[reaper].reap([self.owners[k]]))
        expected = {
            t
            for t, m in self.model.items()
            if m.state in RUNNING_STATES and m.owner == self.owners[k]
        }
        assert set(ids) == expected
        for task_id in expected:
            self.model[task_id].state = TaskState.FAILURE

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def records_match_the_model(self) -> None:
        if not self.stores:
            return
        store = self.stores[next(i for i in range(len(self.stores)) if self.alive(i))]
        for task_id in IDS:
            record = self.run(store.get(task_id))
            model = self.model.get(task_id)
            if model is None:
                assert record is None
                continue
            assert record is not None
            assert record.state is model.state, (task_id, record.state, model.state)
            assert (record.reason.message if record.reason else None) == model.reason
            if model.state in RUNNING_STATES:
                assert record.owner == model.owner
            assert (record.finished_at is not None) == model.state.is_terminal or (
                model.state is TaskState.ABORTED and not model.started
            )


def test_stores_follow_the_state_machine(store_url: str, tmp_path: Any) -> None:
    if store_url.startswith("memory"):

        def make() -> str:
            return f"memory://m_{uuid.uuid4().hex}"
    elif store_url.startswith("sqlite"):

        def make() -> str:
            return f"sqlite:///{tempfile.mkdtemp(dir=tmp_path)}/model.db"
    else:
        base = store_url.split("?", 1)[0]

        def make() -> str:
            return f"{base}?aioabort_schema=m_{uuid.uuid4().hex[:12]}"

    StoreMachine.url_maker = staticmethod(make)
    run_state_machine_as_test(
        StoreMachine,
        settings=settings(
            max_examples=25,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


# -- hostile input ---------------------------------------------------------------------------

json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
)
json_values = st.recursive(
    json_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
hostile_values = st.one_of(
    json_values,
    st.just(float("nan")),
    st.just(float("inf")),
    st.binary(max_size=8),
    st.sets(st.integers()),
    st.dictionaries(st.integers(), st.integers(), min_size=1, max_size=2),
    st.just("x" * 1_100_000),
    st.builds(object),
)
sql_looking = st.sampled_from(
    [
        "'; DROP TABLE aioabort_tasks; --",
        "1 OR 1=1",
        '" OR ""="',
        "$1",
        "%s",
        "?",
        "\\",
        "x' UNION SELECT * FROM aioabort_owners --",
    ]
)
hostile_text = st.one_of(
    st.text(max_size=250),
    sql_looking,
    st.text(alphabet=st.characters(codec="utf-8"), max_size=30),
    st.sampled_from(["", "\x00", "a\x00b", "\ud800", "é" * 201, "\n", " "]),
)


def _run_with_app(store_url: str, check: Any) -> None:
    with asyncio.Runner() as runner:
        app = aioabort.App(store_url)
        runner.run(app.open())
        try:
            check(runner, app)
        finally:
            runner.run(app.aclose())


def test_hostile_task_ids_are_refused_or_round_trip(store_url: str) -> None:
    def check(runner: asyncio.Runner, app: aioabort.App) -> None:
        @given(task_id=hostile_text)
        @settings(max_examples=150, deadline=None)
        def one(task_id: str) -> None:
            async def go() -> None:
                before = await app.counts()
                try:
                    handle = await app.create(task_id)
                except aioabort.InvalidTaskId:
                    assert await app.counts() == before
                    return
                except aioabort.TaskAlreadyExists:
                    return
                record = await handle.record()
                assert record.id == task_id
                assert [r.id for r in await app.tasks(limit=10_000) if r.id == task_id] == [task_id]

            runner.run(go())

        one()

    _run_with_app(store_url, check)


def test_hostile_reasons_are_refused_or_round_trip(store_url: str) -> None:
    def check(runner: asyncio.Runner, app: aioabort.App) -> None:
        @given(message=hostile_text, by=st.one_of(st.none(), hostile_text))
        @settings(max_examples=100, deadline=None)
        def one(message: str, by: str | None) -> None:
            async def go() -> None:
                handle = await app.create()
                try:
                    recorded = await handle.abort(message, by=by)
                except aioabort.InvalidReason:
                    record = await handle.record()
                    assert record.state is TaskState.PENDING and record.reason is None
                    return
                assert recorded
                reason = (await handle.record()).reason
                assert reason is not None and reason.message == message
                assert by is None or reason.by == by

            runner.run(go())

        one()

    _run_with_app(store_url, check)


def test_hostile_task_arguments_are_refused_or_round_trip(store_url: str) -> None:
    def check(runner: asyncio.Runner, app: aioabort.App) -> None:
        @app.task(name="echo")
        async def echo(value: Any) -> Any:
            return value

        @given(value=hostile_values)
        @settings(
            max_examples=120,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example],
        )
        def one(value: Any) -> None:
            async def go() -> None:
                before = await app.counts()
                try:
                    handle = await echo.delay(value)
                except aioabort.NotJSONSerializable:
                    assert await app.counts() == before
                    return
                stored = (await handle.record()).args
                assert isinstance(stored, dict)
                assert json.dumps(stored["args"][0], sort_keys=True) == json.dumps(
                    json.loads(json.dumps(value)), sort_keys=True
                )

            runner.run(go())

        one()

    _run_with_app(store_url, check)


@given(
    url=st.one_of(
        st.text(max_size=60),
        sql_looking,
        st.from_regex(r"(sqlite|postgresql|mysql|redis):/{0,4}[\x00-\x7f]{0,20}"),
    )
)
@settings(max_examples=200, deadline=None)
def test_hostile_urls_get_a_specific_error_or_an_app(url: str) -> None:
    try:
        app = aioabort.App(url)
    except (aioabort.InvalidURL, aioabort.MissingDriver):
        return
    assert not app.is_open
    assert ":" in url


def test_json_rejects_what_would_not_round_trip() -> None:
    from aioabort._types import dump_json

    deep = ("{", [{"ok": [1, {None: "a key json would turn into 'null'"}]}])
    for bad in (float("nan"), math.inf, {1: 2}, {"a": {2: 3}}, b"bytes", {1, 2}, deep):
        with pytest.raises(aioabort.NotJSONSerializable):
            dump_json(bad, "value")
    assert dump_json((1, [2, (3,)]), "value") == "[1,[2,[3]]]"
    assert dump_json(["{1: 2}", {"k": ("}",)}], "value") == '["{1: 2}",{"k":["}"]}]'
