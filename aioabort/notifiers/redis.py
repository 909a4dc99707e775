"""The Redis notifier (extra ``redis``): Redis pub/sub through redis-py's asyncio client.

``redis://[user:password@]host[:port][/db]`` (``rediss://`` for TLS). Pub/sub channels are not
per database in Redis: every App on one server shares its channels, and messages name what
they are about, so a message meant for another App's tasks is ignored by the receiver.

Two connections: one subscribed (a reader task hands each message over), one that publishes
(a pipeline per batch: one round trip). redis-py's own retries are off: aioabort reconnects,
with backoff, and subscribes again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection, Sequence
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .._errors import InvalidURL
from ..backends import redact
from . import Notifier, OnLost, OnMessage

__all__ = ["RedisNotifier"]


class RedisNotifier(Notifier):
    """Redis pub/sub. Made by the App from a ``redis://`` notifier URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.display_url = redact(url)
        self._client: Any = None
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._confirming: dict[str, asyncio.Future[None]] = {}

    @classmethod
    def check_url(cls, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise InvalidURL(
                f"a Redis notifier URL looks like redis://host:6379/0, got {redact(url)!r}"
            )
        try:
            parts.port  # noqa: B018 - a port that is not a number raises here
        except ValueError as exc:
            raise InvalidURL(f"bad port in the notifier URL {redact(url)!r}") from exc

    @classmethod
    def from_url(cls, url: str) -> RedisNotifier:
        return cls(url)

    async def connect(self, on_message: OnMessage, on_lost: OnLost, *, timeout: float) -> None:
        client = aioredis.Redis.from_url(
            self.url,
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=timeout,
            socket_keepalive=True,
        )
        self._client = client
        try:
            await asyncio.wait_for(client.ping(), timeout)
            pubsub = client.pubsub()
            self._pubsub = pubsub
            # The reader's connection is made here: a pub/sub connection without a channel
            # is only made by its first SUBSCRIBE, and aioabort subscribes later.
            await pubsub.subscribe(_PROBE)
            await asyncio.wait_for(pubsub.get_message(timeout=None), timeout)
        except BaseException:
            await self.close()
            raise
        self._reader = asyncio.get_running_loop().create_task(
            self._read(pubsub, on_message, on_lost), name="aioabort-redis-notifier"
        )

    async def _read(self, pubsub: Any, on_message: OnMessage, on_lost: OnLost) -> None:
        try:
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is None:
                    continue
                kind, channel = message["type"], message["channel"]
                channel = channel.decode() if isinstance(channel, bytes) else str(channel)
                if kind == "message":
                    on_message(channel, bytes(message["data"]))
                elif kind == "subscribe":
                    confirmed = self._confirming.pop(channel, None)
                    if confirmed is not None and not confirmed.done():
                        confirmed.set_result(None)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - any end of the reader is a lost connection
            for waiting in self._confirming.values():
                if not waiting.done():
                    waiting.set_exception(ConnectionError("the Redis connection was lost"))
            self._confirming.clear()
            on_lost(exc)

    async def subscribe(self, subjects: Collection[str]) -> None:
        if not subjects:
            return
        loop = asyncio.get_running_loop()
        waiting = [self._confirming.setdefault(s, loop.create_future()) for s in subjects]
        await self._pubsub.subscribe(*subjects)
        await asyncio.gather(*waiting)  # confirmed: a publish from now on reaches us

    async def unsubscribe(self, subjects: Collection[str]) -> None:
        if subjects:
            await self._pubsub.unsubscribe(*subjects)

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        if len(messages) == 1:
            await self._client.publish(*messages[0])
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for subject, payload in messages:
                pipe.publish(subject, payload)
            await pipe.execute()

    async def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
        pubsub, self._pubsub = self._pubsub, None
        client, self._client = self._client, None
        for closing in (pubsub, client):
            if closing is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(closing.aclose(), 2)


#: A channel nothing publishes to: the first subscription, which opens the reader's connection.
_PROBE = "aioabort.connected"
