"""A notifier's connection kept up: connects with backoff, keeps the subjects wanted,
publishes in the background, and says when it is down.

Best effort by design (guarantee G17): :meth:`Push.publish` never waits and never fails; while
the notifier is down, messages are dropped (and counted), and the store's poll finds what they
would have said. After each (re)connect, ``on_connected`` runs: the process re-reads what it
watches, since messages may have been missed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable, Collection

from . import _telemetry
from ._backoff import Backoff
from .notifiers import Notifier, NotifierStatistics, OnMessage

logger = logging.getLogger("aioabort.notifier")

#: Messages waiting to be sent, at most (a burst beyond it drops the oldest: hints only).
_MAX_QUEUED = 50_000
#: Seconds a connection attempt (and a subscription) may take.
CONNECT_TIMEOUT = 2.0
#: Seconds a closing App gives the messages still queued (the ends of its last tasks).
_DRAIN_TIMEOUT = 1.0


def _reraise_cancellation() -> None:
    """A driver that turned our cancellation into an error of its own (a timeout while
    connecting) must not keep a cancelled task alive: raise it again."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Push:
    """Keeps ``notifier`` connected while open, subscribed to the subjects wanted."""

    def __init__(
        self,
        notifier: Notifier,
        on_message: OnMessage,
        on_connected: Callable[[], None],
    ) -> None:
        self.notifier = notifier
        self._on_message = on_message
        self._on_connected = on_connected
        self._wanted: set[str] = set()
        self._subscribed: set[str] = set()
        self._connected = False
        self._lost = asyncio.Event()
        self._queue: collections.deque[tuple[str, bytes]] = collections.deque(maxlen=_MAX_QUEUED)
        self._queued = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._lock = asyncio.Lock()  # one change of subscriptions at a time
        self.outages = self.reconnects = self.published = self.dropped = 0
        self.received = self.ignored = 0

    @property
    def connected(self) -> bool:
        return self._connected

    async def start(self) -> None:
        """Try to connect once (bounded), then keep trying in the background: an App opens
        whether or not its notifier answers."""
        first = await self._connect()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._supervise(first), name="aioabort-notifier"),
            loop.create_task(self._send(), name="aioabort-notifier-sender"),
        ]

    async def stop(self) -> None:
        """Send what is queued (for a second at most), then close."""
        tasks, self._tasks = self._tasks, []
        self._stopping = True
        self._queued.set()
        if tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(tasks[1]), _DRAIN_TIMEOUT)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._connected = False
        await self.notifier.close()

    # -- subscriptions -----------------------------------------------------------------------

    async def want(self, subjects: Collection[str]) -> None:
        """Receive exactly ``subjects`` from now on; returns once a message published to
        them from now on reaches this process (at once while the notifier is down: the
        reconnect subscribes, and ``on_connected`` makes up for what was missed)."""
        self._wanted = set(subjects)
        if not self._connected:
            return
        async with self._lock:
            try:
                await self._sync_subscriptions()
            except Exception as exc:  # noqa: BLE001 - best effort: the reconnect subscribes
                _reraise_cancellation()
                self._mark_lost(exc)

    async def _sync_subscriptions(self) -> None:
        wanted = set(self._wanted)
        new, old = wanted - self._subscribed, self._subscribed - wanted
        if new:
            await asyncio.wait_for(self.notifier.subscribe(sorted(new)), CONNECT_TIMEOUT)
            self._subscribed |= new
        if old:
            await self.notifier.unsubscribe(sorted(old))
            self._subscribed -= old

    # -- publishing --------------------------------------------------------------------------

    def publish(self, subject: str, payload: bytes) -> None:
        """Send a message soon, in the background; dropped while the notifier is down."""
        if not self._connected:
            self.dropped += 1
            return
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append((subject, payload))
        self._queued.set()

    async def _send(self) -> None:
        while not (self._stopping and not self._queue):
            await self._queued.wait()
            self._queued.clear()
            batch = list(self._queue)
            self._queue.clear()
            if not batch:
                continue
            if not self._connected:
                self.dropped += len(batch)
                continue
            try:
                await self.notifier.publish(batch)
            except Exception as exc:  # noqa: BLE001 - hints lost: the store's poll finds them
                _reraise_cancellation()
                self.dropped += len(batch)
                self._mark_lost(exc)
            else:
                self.published += len(batch)

    # -- the connection ----------------------------------------------------------------------

    def _handle(self, subject: str, payload: bytes) -> None:
        try:
            self._on_message(subject, payload)
        except Exception:  # a malformed hint must not end the reader
            logger.exception("a notifier message could not be read", extra={"subject": subject})

    def _mark_lost(self, exc: BaseException) -> None:
        if self._connected:
            self._connected = False
            self._down(exc, "notifier connection lost; polling the store until it is back")

    def _down(self, exc: BaseException, message: str) -> None:
        """One outage begins: counted, logged, the OTel counter."""
        self.outages += 1
        _telemetry.notifier_outage(self.notifier.display_url)
        logger.warning(
            "%s (%s: %s)",
            message,
            type(exc).__name__,
            exc,
            extra={
                "action": "notifier_down",
                "url": self.notifier.display_url,
                "error": f"{type(exc).__name__}: {exc}",
            },
        )
        self._lost.set()

    async def _connect(self) -> bool:
        """One attempt: connect and subscribe. Whether it worked."""
        self._lost.clear()
        try:
            await self.notifier.connect(self._handle, self._mark_lost, timeout=CONNECT_TIMEOUT)
            async with self._lock:
                self._subscribed = set()
                await self._sync_subscriptions()
        except Exception as exc:  # noqa: BLE001 - any failure: down, try again later
            _reraise_cancellation()
            with contextlib.suppress(Exception):
                await self.notifier.close()
            return self._failed(exc)
        self._connected = True
        return True

    def _failed(self, exc: Exception) -> bool:
        if self.outages == 0:  # down from the start (later outages began at _mark_lost)
            self._down(exc, "notifier unreachable; polling the store until it answers")
        return False

    async def _supervise(self, connected: bool) -> None:
        backoff = Backoff(0.1, 5.0)
        while True:
            if connected:
                await self._lost.wait()
                await self.notifier.close()
            await asyncio.sleep(backoff.next())
            connected = await self._connect()
            if connected:
                backoff.reset()
                self.reconnects += 1
                logger.info(
                    "notifier connected again",
                    extra={"action": "notifier_reconnected", "url": self.notifier.display_url},
                )
                self._on_connected()

    def statistics(self) -> NotifierStatistics:
        return NotifierStatistics(
            url=self.notifier.display_url,
            connected=self._connected,
            outages=self.outages,
            reconnects=self.reconnects,
            published=self.published,
            dropped=self.dropped,
            received=self.received,
            ignored=self.ignored,
        )
