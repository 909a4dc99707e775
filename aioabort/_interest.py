"""Who listens to which subject, learned through the notifier itself, so that a task's end or
new work is published only when some process waits for it (nothing is sent to nobody).

Each process says which of these subjects it listens to (ends: it has waiters; a queue's: its
workers claim from it) on one subject every process hears, when that changes; a process that
starts asks, and those that listen answer. A process that learns of a new listener sends it
again what it published, or held back, in the last :data:`REPLAY` seconds: a listener that
subscribed, then said so, then read the store, misses nothing committed in between.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Callable, Collection

#: The subject every process listens to for the others' interests.
SUBJECT = "aioabort.interest"
#: Seconds of hinted messages kept to send again to a listener that just said so.
REPLAY = 2.0


class Interest:
    """The listeners this process knows of, and what it holds back for want of one."""

    def __init__(self, owner: str, publish: Callable[[str, bytes], None]) -> None:
        self._owner = owner
        self._publish = publish
        self._mine: frozenset[str] = frozenset()
        #: subject -> the owners that listen to it.
        self._listeners: dict[str, set[str]] = {}
        self._recent: collections.deque[tuple[float, str, bytes]] = collections.deque()
        self.held_back = 0

    def listening(self, subject: str) -> bool:
        return bool(self._listeners.get(subject))

    def send(self, subject: str, payload: bytes) -> None:
        """Publish ``payload`` on ``subject`` if anyone listens; keep it a moment either way."""
        now = time.monotonic()
        recent = self._recent
        recent.append((now, subject, payload))
        while recent and recent[0][0] < now - REPLAY:
            recent.popleft()
        if self.listening(subject):
            self._publish(subject, payload)
        else:
            self.held_back += 1

    def mine(self, subjects: Collection[str]) -> None:
        """This process listens to ``subjects`` now (subscribed already): say so if new."""
        subjects = frozenset(subjects)
        if subjects != self._mine:
            self._mine = subjects
            self._say()

    def ask(self) -> None:
        """Ask the others what they listen to (at start, and after a reconnect); and say."""
        self._publish(SUBJECT, json.dumps({"owner": self._owner, "ask": True}).encode())
        if self._mine:
            self._say()

    def leave(self) -> None:
        if self._mine:
            self._mine = frozenset()
            self._say()

    def _say(self) -> None:
        message = {"owner": self._owner, "subjects": sorted(self._mine)}
        self._publish(SUBJECT, json.dumps(message).encode())

    def heard(self, payload: bytes) -> None:
        """Another process said what it listens to, or asked."""
        data = json.loads(payload)
        owner = str(data["owner"])
        if owner == self._owner:
            return
        if data.get("ask"):
            if self._mine:
                self._say()
            return
        now = set(map(str, data["subjects"]))
        new = set()
        for subject in now | set(self._listeners):
            owners = self._listeners.setdefault(subject, set())
            if subject in now and owner not in owners:
                owners.add(owner)
                new.add(subject)
            elif subject not in now:
                owners.discard(owner)
            if not owners:
                del self._listeners[subject]
        cutoff = time.monotonic() - REPLAY
        for at, subject, payload_ in self._recent:
            if subject in new and at >= cutoff:
                self._publish(subject, payload_)
