"""Notifiers: a push channel beside the store, one module per engine.

The store stays the truth; a notifier only carries hints that something committed, so a
process hears at once what it would otherwise find at its next poll (guarantee G17). Engines
are loaded by URL scheme, only when their scheme is used:

* ``redis://host:6379/0`` (``rediss://`` with TLS): :mod:`aioabort.notifiers.redis`, extra
  ``redis`` (redis-py's asyncio client).
* ``nats://host:4222`` (``tls://`` with TLS): :mod:`aioabort.notifiers.nats`, extra ``nats``
  (nats-py).

An engine implements :class:`Notifier`: connect, subscribe, publish, close. It does not
reconnect, buffer, or decide what is published: aioabort does that once for every engine
(reconnects with backoff, publishes after commit, drops while down).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from .._errors import InvalidURL, UsageError
from .._schemes import Scheme, load

__all__ = [
    "Notifier",
    "NotifierStatistics",
    "OnLost",
    "OnMessage",
    "check_url",
    "make",
    "register_scheme",
]

#: Called on the event loop thread with each message: its subject and its payload.
OnMessage = Callable[[str, bytes], None]
#: Called on the event loop thread, once, when the connection is lost (with why).
OnLost = Callable[[BaseException], None]


class Notifier(abc.ABC):
    """One engine's connection: subjects (Redis channels, NATS subjects) and messages.

    Every method but :meth:`close` may raise any error on failure: the caller treats it as
    the connection lost, closes it and connects again later with backoff.
    """

    #: The URL with any password removed, for messages and logs.
    display_url: str

    @classmethod
    @abc.abstractmethod
    def check_url(cls, url: str) -> None:
        """Raise :class:`InvalidURL` if ``url`` cannot be used. No I/O."""

    @classmethod
    @abc.abstractmethod
    def from_url(cls, url: str) -> Notifier:
        """The notifier for ``url`` (checked by :meth:`check_url`); no I/O until connected."""

    @abc.abstractmethod
    async def connect(self, on_message: OnMessage, on_lost: OnLost, *, timeout: float) -> None:
        """Connect within ``timeout`` seconds. From then on, call ``on_message`` with each
        message of the subjects subscribed, and ``on_lost`` once if the connection ends
        other than by :meth:`close`."""

    @abc.abstractmethod
    async def subscribe(self, subjects: Collection[str]) -> None:
        """Start receiving ``subjects``; returns once the server will deliver what is
        published to them from now on."""

    @abc.abstractmethod
    async def unsubscribe(self, subjects: Collection[str]) -> None:
        """Stop receiving ``subjects``."""

    @abc.abstractmethod
    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Send ``(subject, payload)`` messages, in order, at most once each."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection; never raises, safe to call twice."""


@dataclass(frozen=True, slots=True)
class NotifierStatistics:
    """A snapshot of the notifier's counters (``watcher.statistics().notifier``).

    :ivar url: the notifier's URL, without its password.
    :ivar connected: whether it is connected now.
    :ivar outages: times it was found down (at start, or a connection lost).
    :ivar reconnects: times it connected again after an outage.
    :ivar published: messages sent (with those that say who listens to what).
    :ivar dropped: messages not sent because it was down.
    :ivar received: messages received about tasks (aborts, ends, new work).
    :ivar ignored: abort messages received for tasks this process does not run.
    :ivar held_back: task ends and new work not sent because no process listened for them.
    """

    url: str
    connected: bool
    outages: int
    reconnects: int
    published: int
    dropped: int
    received: int
    ignored: int
    held_back: int = 0


_SCHEMES: dict[str, Scheme] = {}


def register_scheme(
    scheme: str, target: str, *, extra: str | None = None, driver: str | None = None
) -> None:
    """Make ``App(..., notifier="scheme://...")`` use the :class:`Notifier` subclass
    ``target`` (``"package.module:ClassName"``, imported only when a URL of that scheme is
    used).

    :param extra: the pip extra that installs its driver, named in :class:`MissingDriver`.
    :param driver: the driver's module, imported first so a missing one says so.
    """
    if ":" not in target:
        raise UsageError(f"a notifier target looks like 'package.module:ClassName': {target!r}")
    _SCHEMES[scheme] = Scheme(target, extra, driver)


register_scheme("redis", "aioabort.notifiers.redis:RedisNotifier", extra="redis", driver="redis")
register_scheme("rediss", "aioabort.notifiers.redis:RedisNotifier", extra="redis", driver="redis")
register_scheme("nats", "aioabort.notifiers.nats:NatsNotifier", extra="nats", driver="nats")
register_scheme("tls", "aioabort.notifiers.nats:NatsNotifier", extra="nats", driver="nats")


def _load(url: object) -> type[Notifier]:
    if not isinstance(url, str) or "://" not in url:
        raise InvalidURL(
            f"a notifier URL looks like redis://host:6379/0 or nats://host:4222, got {url!r}"
        )
    scheme = url.split("://", 1)[0].lower()
    if scheme not in _SCHEMES:
        known = ", ".join(sorted(_SCHEMES))
        raise InvalidURL(f"unknown notifier URL scheme {scheme!r}: expected one of {known}")
    cls: type[Notifier] = load(
        scheme, _SCHEMES[scheme], what="notifier", driver_is="package", base=Notifier
    )
    return cls


def check_url(url: object) -> None:
    """Check a notifier URL and load its engine's module; no I/O.

    :raises InvalidURL: for a URL that is not a string or has an unknown scheme.
    :raises MissingDriver: when the engine's package is not installed (names the extra).
    """
    _load(url).check_url(str(url))


def make(url: str) -> Notifier:
    """The notifier for ``url`` (see :func:`check_url`), not yet connected."""
    cls = _load(url)
    cls.check_url(url)
    return cls.from_url(url)
