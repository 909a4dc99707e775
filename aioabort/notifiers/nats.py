"""The NATS notifier (extra ``nats``): NATS core pub/sub through nats-py.

``nats://[user:password@]host[:port]`` (``tls://`` for TLS). NATS routes a message only to the
connections subscribed to its subject, so an abort addressed to one process reaches that
process alone, and a subject nobody subscribes to costs the server nothing.

One connection subscribes and publishes. nats-py's own reconnection is off (its buffer would
replay stale hints later): aioabort reconnects, with backoff, and subscribes again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection, Sequence
from typing import Any
from urllib.parse import urlsplit

from nats.aio.client import Client as NatsClient

from .._errors import InvalidURL
from ..backends import redact
from . import Notifier, OnLost, OnMessage

__all__ = ["NatsNotifier"]


class NatsNotifier(Notifier):
    """NATS core. Made by the App from a ``nats://`` notifier URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.display_url = redact(url)
        self._client: Any = None
        self._subscriptions: dict[str, Any] = {}
        self._closing = False

    @classmethod
    def check_url(cls, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("nats", "tls") or not parts.hostname:
            raise InvalidURL(
                f"a NATS notifier URL looks like nats://host:4222, got {redact(url)!r}"
            )
        try:
            parts.port  # noqa: B018 - a port that is not a number raises here
        except ValueError as exc:
            raise InvalidURL(f"bad port in the notifier URL {redact(url)!r}") from exc

    @classmethod
    def from_url(cls, url: str) -> NatsNotifier:
        return cls(url)

    async def connect(self, on_message: OnMessage, on_lost: OnLost, *, timeout: float) -> None:
        self._closing = False
        self._on_message = on_message

        async def closed() -> None:
            if not self._closing:
                on_lost(ConnectionError("the NATS connection was closed"))

        async def quiet(exc: Exception) -> None:
            """Errors are reported once, as the connection lost (closed_cb)."""

        # The client is ours before it connects: a connect cancelled half way (an abort
        # while the App opens) is closed by close(), not left with its socket open.
        self._client = client = NatsClient()
        await client.connect(
            self.url,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=max(1, round(timeout)),
            ping_interval=10,
            max_outstanding_pings=2,
            closed_cb=closed,
            error_cb=quiet,
        )
        self._subscriptions = {}

    async def _deliver(self, msg: Any) -> None:
        self._on_message(msg.subject, msg.data)

    async def subscribe(self, subjects: Collection[str]) -> None:
        for subject in subjects:
            if subject not in self._subscriptions:
                self._subscriptions[subject] = await self._client.subscribe(
                    subject, cb=self._deliver
                )
        await self._client.flush()  # the server has the subscriptions: publishes reach us

    async def unsubscribe(self, subjects: Collection[str]) -> None:
        for subject in subjects:
            subscription = self._subscriptions.pop(subject, None)
            if subscription is not None:
                await subscription.unsubscribe()

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        client = self._client
        if client is None or not client.is_connected:
            raise ConnectionError("the NATS connection is not open")
        for subject, payload in messages:
            await client.publish(subject, payload)

    async def close(self) -> None:
        self._closing = True
        client, self._client = self._client, None
        self._subscriptions = {}
        if client is not None and not client.is_closed:
            with contextlib.suppress(Exception):  # closing: whatever it says, it is closed
                await asyncio.wait_for(client.close(), 2)
