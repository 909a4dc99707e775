"""The storage contract every store implements, and how the core calls it.

A store keeps task records and tells the core when something changed. It decides nothing: the
legal state changes come from :mod:`aioabort._state`, and the SQL guards mirror its sets. Stores
live in :mod:`aioabort.backends` and are imported only when their URL scheme is used.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from ._errors import InvalidURL
from ._state import StartDecision, TaskRecord, TaskState
from ._timeline import TaskEvent
from ._types import AbortReason, ErrorInfo


@dataclass(frozen=True, slots=True)
class AbortNotice:
    """An abort request the store saw committed: the id and the first reason on its record.

    :ivar attempt: the record's ``attempts`` when the request was read: the run it was meant
        for. A retryable task that went back to the queue runs again with a higher count, and
        a request for an earlier run must not stop it. ``None`` where unknown (any run).
    """

    task_id: str
    reason: AbortReason
    attempt: int | None = None


@dataclass(frozen=True, slots=True)
class Change:
    """Something was committed to the store; ``aborts`` lists abort requests among it.

    :ivar ids: the tasks whose records changed (the ids of ``aborts`` count too): only their
        waiters wake (guarantee G13). ``None`` means the store cannot tell (after a reconnect,
        say): every waiter wakes and reads again. An empty set names no task (new work
        queued, say): only listeners of every change wake.
    """

    aborts: tuple[AbortNotice, ...] = ()
    ids: frozenset[str] | None = None

    def names(self, task_id: str) -> bool:
        """Whether this change may concern ``task_id``."""
        if self.ids is None:
            return True
        return task_id in self.ids or any(n.task_id == task_id for n in self.aborts)


@dataclass(frozen=True, slots=True)
class AbortOutcome:
    """What :meth:`Store.request_abort` did.

    :ivar recorded: whether this call recorded a new abort request.
    :ivar record: the record afterwards (``None``: no such task; nothing was written).
    :ivar children: unfinished descendants aborted with it (code ``parent``).
    """

    recorded: bool
    record: TaskRecord | None
    children: tuple[AbortNotice, ...] = ()


@dataclass(frozen=True, slots=True)
class StartResult:
    """What :meth:`Store.start` found and did."""

    decision: StartDecision
    record: TaskRecord


@dataclass(frozen=True, slots=True)
class OwnerInfo:
    """A live process (one open App) that owns the tasks it runs."""

    id: str
    host: str
    pid: int


@dataclass(frozen=True, slots=True)
class QuietOwner:
    """An owner the reaper looks at (see :meth:`Store.heartbeat`).

    :ivar beats: its heartbeat counter.
    :ivar quiet_for: seconds since its last beat, by the store's clock.
    """

    beats: int
    quiet_for: float


@dataclass(frozen=True, slots=True)
class Unclaimed:
    """Queued tasks of one queue and name that no live worker can run (no worker serving
    that queue registered the name: [G14](semantics.md#g14) leaves them queued).

    :ivar queue: the queue they wait on.
    :ivar name: the registered name they need.
    :ivar count: how many are queued.
    :ivar oldest: when the oldest of them was queued.
    """

    queue: str
    name: str
    count: int
    oldest: datetime


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    """Counters a store keeps, for tests, benchmarks and ``watcher.statistics()``.

    :ivar statements: SQL statements run for callers (starts, aborts, reads, heartbeats...).
    :ivar watch_statements: SQL statements run by the change watcher alone.
    :ivar watch_polls: how many times the change watcher polled.
    :ivar notifications: push notifications received (PostgreSQL NOTIFY).
    :ivar reconnects: times the change watcher reconnected after losing its connection.
    """

    statements: int = 0
    watch_statements: int = 0
    watch_polls: int = 0
    notifications: int = 0
    reconnects: int = 0


@dataclass(frozen=True, slots=True)
class Due:
    """When a worker has something to do (:meth:`Store.next_due`), in seconds from now by the
    store's clock (zero or less: now; ``None``: nothing of the kind is queued): a task of its
    queues and names to claim (``claimable``), a queued task of any queue to expire."""

    claimable: float | None
    expiring: float | None

    def wait(self, longest: float) -> float:
        """How long a worker with nothing to do now sleeps: until the first of these times,
        at most ``longest``."""
        ahead = [t for t in (self.claimable, self.expiring) if t is not None and t > 0]
        return min([longest, *ahead])


#: Called on the event loop thread with each change the store sees.
ChangeCallback = Callable[[Change], None]
#: Returns the ids of the scopes open in this process (read after every reconnect).
WatchedIds = Callable[[], Collection[str]]


class Store(abc.ABC):
    """The storage contract. One instance serves one open App at a time.

    Every write runs in one short transaction and is a compare-and-set on the record's state:
    a terminal record is never changed. Methods that write report whether they did. The legal
    changes are :mod:`aioabort._state`'s; a store decides nothing of its own.

    A store's duties beyond its methods:

    * **Report changes.** Once :meth:`start_watching` was called, call ``on_change`` on the
      event loop thread: with a :class:`Change` naming the ids it changed after every write
      this store itself committed, so a ``handle.wait()`` in this process wakes at once; with
      the ids of records other processes changed, as far as the store can tell (``ids=None``
      when it cannot: every waiter then reads again); and with the :class:`AbortNotice` of
      every abort request committed by anyone, read at a cost per poll that does not grow
      with the ids watched.
    * **Check URLs without I/O.** A store made from a URL (``App("scheme://...")``) is
      registered with :func:`aioabort.backends.register_scheme`; :meth:`check_url` raises
      :class:`InvalidURL` for a URL it cannot use (called at ``App()``), and :meth:`from_url`
      makes the store (called at ``App.open()``). A store passed as ``App(store=...)`` needs
      neither.
    * **Shape errors.** Every error a method raises is an :class:`AioabortError`
      (:class:`StoreUnavailable`, :class:`StoreBusy`, :class:`StoreError`, or
      :class:`TaskAlreadyExists` from :meth:`create`), raised ``from`` the driver's error.
    * **Bound its own time** (busy timeouts, command timeouts): aioabort runs its writes
      shielded from cancellation and relies on them to end.
    """

    #: The store URL with any password removed, for messages and logs.
    display_url: str
    #: Seconds between the change watcher's polls (a class default a store may override).
    poll_interval: float

    @classmethod  # noqa: B027 - optional: only stores made from a URL override it
    def check_url(cls, url: str) -> None:
        """Raise :class:`InvalidURL` if this store cannot use ``url``. No I/O."""

    @classmethod
    def from_url(cls, url: str, *, poll_interval: float | None = None) -> Store:
        """The store for ``url`` (checked by :meth:`check_url`); no I/O until :meth:`open`.

        :param poll_interval: the App's ``poll_interval=``, when it gave one.
        """
        raise InvalidURL(f"{cls.__name__} is not made from a URL")

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, and create or migrate the schema. Raises :class:`StoreUnavailable`."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop watching and close every connection. Safe to call twice."""

    @abc.abstractmethod
    async def create(
        self,
        task_id: str,
        *,
        name: str | None,
        queue: str | None = None,
        args_json: str | None = None,
        parent_id: str | None = None,
        retryable: bool = False,
        labels: Mapping[str, str] | None = None,
        not_before: datetime | None = None,
        expires_at: datetime | None = None,
        time_limit: float | None = None,
        key: str | None = None,
        supersede: bool = False,
    ) -> TaskRecord:
        """Record a new PENDING task (with ``labels``, checked by the caller). Raises
        :class:`TaskAlreadyExists` if the id is taken (and writes nothing at all).

        ``not_before``, ``expires_at``, ``time_limit`` and ``key`` are stored on the record as
        given (checked by the caller): no claim before ``not_before``; :meth:`expire` ends it
        once ``expires_at`` has passed. With ``supersede``, in the same transaction, every
        unfinished earlier task of ``key`` is aborted as by :meth:`request_abort` (reason
        :func:`~aioabort._state.superseded_reason`, children included), serialised per key:
        producers racing on one key leave exactly one task without an abort request.

        A task whose parent is already aborting is born ABORTED (code ``parent``). A task with
        a ``queue`` wakes the workers of that queue (PostgreSQL: NOTIFY).
        """

    @abc.abstractmethod
    async def start(
        self,
        task_id: str,
        *,
        owner: str,
        name: str | None,
        parent_id: str | None = None,
        adopt: bool = True,
        labels: Mapping[str, str] | None = None,
    ) -> StartResult:
        """Start a task for ``owner``: create it STARTED (with ``labels``), or move it
        PENDING → STARTED (only with ``adopt``; without, a PENDING record is ``TAKEN``; the
        labels of an existing record are never changed).

        Reads the record and applies :func:`aioabort._state.decide_start` in one transaction;
        for any decision other than CREATE/START nothing is written.
        """

    @abc.abstractmethod
    async def claim(
        self,
        *,
        owner: str,
        queues: Collection[str],
        limit: int,
        names: Collection[str] | None = None,
    ) -> list[TaskRecord]:
        """Atomically move up to ``limit`` PENDING tasks of ``queues`` (the earliest due
        first: by ``not_before``, else by when they were queued) to STARTED for ``owner``; no
        two callers ever claim the same task. Never a task before its ``not_before``, nor one
        past its ``expires_at``. With ``names``, only tasks of those names
        ([G14](semantics.md#g14): a worker claims only what it can run)."""

    @abc.abstractmethod
    async def has_pending(
        self, queues: Collection[str], names: Collection[str] | None = None
    ) -> bool:
        """Whether any PENDING task (of ``names``, if given) that :meth:`claim` would take now
        waits in ``queues`` (a read; no lock taken)."""

    @abc.abstractmethod
    async def next_due(self, queues: Collection[str], names: Collection[str] | None) -> Due:
        """When a worker of ``queues`` (running ``names``) next has something to do: a task to
        claim, or one to expire. One read through indexes, whatever the number of tasks queued
        for later: an idle worker sleeps until then (or until new work is pushed)."""

    @abc.abstractmethod
    async def expire(
        self, task_ids: Collection[str] | None = None, *, by: str, limit: int = 1000
    ) -> list[str]:
        """End queued tasks past their ``expires_at`` (of ``task_ids``, or any, up to
        ``limit``): ABORTED with code ``expired`` (``by`` who saw it), logged for watchers
        like any abort, in one transaction. Compare-and-set: a task claimed meanwhile is
        left alone. Returns the ids."""

    @abc.abstractmethod
    async def requeue(self, task_id: str, *, owner: str) -> TaskRecord | None:
        """Put a running task owned by ``owner`` back to PENDING (a retryable task cut off by
        shutdown). Returns the record afterwards."""

    @abc.abstractmethod
    async def retry(
        self, task_id: str, *, owner: str, not_before: datetime, error: ErrorInfo
    ) -> TaskRecord | None:
        """Put a STARTED task owned by ``owner`` back to PENDING for another attempt, not
        before ``not_before``, with ``error`` (the attempt's) kept on the record; a task with
        an abort request (ABORTING) is left as it is (an abort is never retried). Returns the
        record afterwards. A task with a queue wakes that queue's workers."""

    @abc.abstractmethod
    async def request_abort(self, task_id: str, reason: AbortReason) -> AbortOutcome:
        """Record an abort request; the first one wins.

        PENDING → ABORTED, STARTED → ABORTING, with ``reason`` stored and the request logged
        for watchers, in one transaction, together with every unfinished descendant (reason
        code ``parent``). For an id with no record, or a record that is aborting or finished,
        nothing is written.
        """

    async def request_aborts(
        self, task_ids: Sequence[str], reason: AbortReason
    ) -> list[AbortOutcome]:
        """:meth:`request_abort` for each of ``task_ids`` (a batch of
        :meth:`App.abort_many`: a few hundred), outcomes in the same order. A store may do it
        in fewer statements (the SQL store: one transaction for the batch); by default, one
        request each."""
        return list(await asyncio.gather(*(self.request_abort(i, reason) for i in task_ids)))

    @abc.abstractmethod
    async def finish(
        self,
        task_id: str,
        *,
        owner: str,
        state: TaskState,
        result_json: str | None = None,
        error: ErrorInfo | None = None,
    ) -> TaskRecord | None:
        """Write the end state, only if the record is running and owned by ``owner``.

        Returns the record as it is afterwards, or ``None`` if there is none.
        """

    @abc.abstractmethod
    async def get(self, task_id: str) -> TaskRecord | None:
        """The record with this id, or ``None``."""

    @abc.abstractmethod
    async def events(self, task_id: str) -> list[TaskEvent]:
        """The timeline of ``task_id``, oldest first (empty for an unknown id): the rows of
        :func:`aioabort._timeline.stored_events`, then the record's own (``timeline()``)."""

    @abc.abstractmethod
    async def list_tasks(
        self,
        *,
        states: Collection[TaskState] | None = None,
        name: str | None = None,
        limit: int = 100,
        offset: int = 0,
        labels: Mapping[str, str] | None = None,
        id_prefix: str | None = None,
        key: str | None = None,
    ) -> list[TaskRecord]:
        """Records, newest first, optionally filtered by state, name, labels (every given
        label must match; through an index, so the filter costs what it finds), the start
        of their id (``id_prefix``) and their ``key``."""

    @abc.abstractmethod
    async def list_ids(
        self,
        *,
        states: Collection[TaskState] | None = None,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        after: str | None = None,
        limit: int = 500,
    ) -> list[str]:
        """The ids of the records :meth:`list_tasks` would find with these filters, in id
        order: up to ``limit`` of those after ``after`` (``None``: from the first). A cursor
        that records changing or ending meanwhile cannot shift, so reading page after page
        finds every record that matched all along (:meth:`App.abort_many` reads by it). A
        read that is safe to repeat: a store may retry it after losing a connection."""

    @abc.abstractmethod
    async def count_tasks(self) -> dict[TaskState, int]:
        """How many records are in each state (states with none are left out)."""

    async def mark_delivered(self, task_id: str, *, owner: str) -> None:  # noqa: B027 - optional
        """Record, once, when an abort reached the scope running ``task_id`` for ``owner``
        (``abort_delivered_at``: [G16](semantics.md#g16) shows a task that ignores its
        abort). A store that does not keep it leaves the field ``None``: the default."""

    async def note_event(self, task_id: str, *, owner: str, kind: str, detail: str) -> bool:
        """Add an event of ``kind`` (``abort_ignored``, ``escalated``) to the timeline of
        ``task_id`` if ``owner`` runs it; whether it was added. A store without a timeline
        adds none: the default."""
        return False

    @abc.abstractmethod
    async def report(
        self, task_id: str, *, owner: str, progress: float | None, message: str | None
    ) -> bool:
        """Store progress on a running task owned by ``owner``; its waiters wake (the caller
        rate-limits reports)."""

    @abc.abstractmethod
    async def heartbeat(
        self, owner: OwnerInfo, *, lease: float | None = None, quiet: float = 0.0
    ) -> dict[str, QuietOwner] | None:
        """Record that ``owner`` is alive: one write for all its tasks, which bumps its
        ``beats`` counter (liveness is judged by that counter changing, never by clocks).

        :param lease: also take or renew the fleet's reaper lease for this many seconds
            ([G13](semantics.md#g13): one process reaps at a time). It is free when nobody
            holds it or it expired by the store's own clock; its holder renews it;
            ``release_owner`` frees it.
        :param quiet: with ``lease``, the reaper's input is the owners whose last beat is older
            than this many seconds by the store's clock (so its cost grows with dead owners,
            not live ones; the counters, not the clock, then decide who is dead).
        :returns: ``None`` unless ``owner`` holds the lease now; then the quiet owners'
            counters and how long they have been quiet, read with the beat (one statement per
            interval where the dialect allows it).
        """

    @abc.abstractmethod
    async def owner_beats(self) -> dict[str, int]:
        """Every known owner's heartbeat counter."""

    @abc.abstractmethod
    async def reap(self, dead: Collection[str]) -> list[str]:
        """End every running task whose owner is in ``dead`` (or is not a known owner at all)
        as FAILURE with cause ``lost``, and forget the dead owners. Retryable tasks with no
        abort request other than ``shutdown`` go back to PENDING instead. Returns the ids."""

    @abc.abstractmethod
    async def purge(self, older_than: float, *, limit: int) -> list[str]:
        """Delete up to ``limit`` finished records (SUCCESS, FAILURE, ABORTED) that ended more
        than ``older_than`` seconds ago by the store's clock, oldest first, with their
        abort-log rows; never a running or queued one. Returns their ids."""

    @abc.abstractmethod
    async def serve(self, owner: str, *, queues: Collection[str], names: Collection[str]) -> None:
        """Publish that a worker of ``owner`` claims tasks of ``names`` from ``queues`` (what
        :meth:`unclaimed` judges by); forgotten with the owner."""

    @abc.abstractmethod
    async def unserve(self, owner: str, *, queues: Collection[str]) -> None:
        """The worker of ``owner`` on ``queues`` stopped claiming."""

    @abc.abstractmethod
    async def unclaimed(self, *, queued_for: float, quiet: float) -> list[Unclaimed]:
        """Groups of tasks queued more than ``queued_for`` seconds that no worker can run:
        none of the owners seen in the last ``quiet`` seconds (by the store's clock) serves
        their queue and name. Oldest group first."""

    @abc.abstractmethod
    async def release_owner(self, owner: str) -> list[str]:
        """A clean shutdown of ``owner``: end its still-running tasks as lost, forget it, and
        free the reaper lease if it holds it."""

    @abc.abstractmethod
    async def start_watching(self, on_change: ChangeCallback, watched: WatchedIds) -> None:
        """Begin delivering changes to ``on_change`` on the event loop thread.

        The store's cost per poll must not depend on how many ids are watched.
        """

    async def subscribe(self, *, ends: bool, queues: frozenset[str]) -> None:  # noqa: B027 - optional: most stores see every change
        """What this process needs pushed besides abort requests: task ends (``ends``: it has
        waiters) and new work on ``queues`` (its workers claim from them). Returns once
        nothing asked for can be missed (a push that cannot be set up now is made up for by
        a change naming every id, ``Change()``, once it can). A store that sees every change
        anyway (a poll, a shared memory) has nothing to do: the default."""

    def scopes_open(self, any_open: bool) -> None:  # noqa: B027 - optional
        """This process now has a scope open (``True``: called before the first one's start is
        written) or none any more. A store that reads other processes' changes may read
        none while it has nothing to tell: no scope, no waiter, no worker (:meth:`subscribe`
        says the last two). The default: it reads them anyway."""

    def push_elsewhere(self) -> None:  # noqa: B027 - optional: most stores push nothing
        """A notifier carries this store's pushes from now on (``App(notifier=...)``; called
        before :meth:`open`): a store that pushes through its database (PostgreSQL NOTIFY)
        stops doing so, and finds what others changed by its poll alone. The default: nothing
        to stop."""

    def poll_now(self) -> None:  # noqa: B027 - optional: a store that sees every change at once
        """Look for changes now instead of at the next poll: a push may have been missed
        (the notifier was down). The default: nothing to do."""

    @abc.abstractmethod
    def statistics(self) -> StoreStatistics:
        """Counters for tests and benchmarks."""
