"""The abort sweep over aioabort's own cleanup with a notifier beside the store: an App opened,
used and closed inside the body, aborted at each of its awaits (aioabort's and the client
library's), leaves no task running and no connection open on the real server."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

import aioabort
from aioabort._sweep import sweep
from aioabort.testing import SweepRun

from ._brokers import Broker
from .conftest import wait_until
from .test_sweep_own import OWN, _Body


@pytest.fixture(params=["redis", "nats"])
def notifier(request: pytest.FixtureRequest) -> Broker:
    server: Broker = request.getfixturevalue(f"{request.param}_server")
    return server


async def connections(server: Broker) -> int:
    """Clients connected to the server now, counted by the server itself."""
    host, port = server.url.split("://")[1].split(":")
    if server.url.startswith("redis"):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"CLIENT LIST\r\n")
        await writer.drain()
        header = await reader.readline()  # $<length>
        body = await reader.readexactly(int(header[1:]) + 2)
        writer.close()
        await writer.wait_closed()
        return body.decode().count("\n") - 1  # less this connection's own line
    # NATS: the server's monitoring endpoint (HTTP on a port of its own).
    reader, writer = await asyncio.open_connection(host, server.monitor_port)
    writer.write(b"GET /connz HTTP/1.0\r\n\r\n")
    await writer.drain()
    raw = await reader.read()
    writer.close()
    return int(json.loads(raw.split(b"\r\n\r\n", 1)[1])["num_connections"])


async def test_an_app_with_a_notifier_leaves_nothing_open_wherever_the_abort_lands(
    notifier: Broker, tmp_path: Path
) -> None:
    before = await connections(notifier)

    async def body(scope: aioabort.AbortScope) -> None:
        store = f"sqlite:///{tmp_path / uuid.uuid4().hex}.db"
        async with aioabort.App(store, notifier=notifier.url) as inner:
            handle = await inner.create()
            await handle.abort("swept")
            await handle.wait(timeout=10)

    async def check(run: SweepRun) -> None:
        async def closed() -> bool:  # the server sees a close a moment after the client
            return await connections(notifier) == before

        await wait_until(closed, timeout=5, what="the notifier's connection to be closed")

    report = await sweep(_Body(body), check, None, 20.0, OWN)
    assert report.ok, str(report)
    assert report.points >= 10, report.points
