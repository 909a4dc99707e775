"""Real web servers on loopback for the tests: a uvicorn process of its own (the example
application, or any ASGI target of the repository), an aiohttp server process of its own, or
a uvicorn in this process."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from ._processes import Process, environment, module, python, started
from .conftest import wait_until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    """A server process: its base URL, and the process (to signal it, or read its stderr)."""

    base: str
    process: Process


@asynccontextmanager
async def uvicorn(
    target: str, store_url: str, *, ready: str, ready_status: int, **env: str
) -> AsyncIterator[Server]:
    """``uvicorn TARGET`` in a process of its own on a free loopback port, with
    ``AIOABORT_URL=store_url`` (and ``env``); yields once ``GET ready`` answers
    ``ready_status`` (within 30 s), and stops it after (SIGTERM; killed, and a failure, if it
    is still running 30 s later)."""
    port = free_port()
    command = module(
        "uvicorn",
        target,
        *("--host", "127.0.0.1", "--port", str(port)),
        *("--log-level", "warning", "--no-access-log"),
    )
    async with _serving(
        command, f"uvicorn {target}", port, store_url, ready, ready_status, env
    ) as server:
        yield server


#: ``python -c AIOHTTP_RUN module:factory PORT``: an aiohttp server on loopback, quiet.
AIOHTTP_RUN = (
    "import importlib, sys; from aiohttp import web; "
    "module, factory = sys.argv[1].split(':'); "
    "app = getattr(importlib.import_module(module), factory)([]); "
    "web.run_app(app, host='127.0.0.1', port=int(sys.argv[2]), print=None)"
)


@asynccontextmanager
async def aiohttp_server(
    target: str, store_url: str, *, ready: str, ready_status: int, **env: str
) -> AsyncIterator[Server]:
    """aiohttp's ``web.run_app()`` of ``TARGET`` (an application factory ``module:function``,
    called with ``[]``) in a process of its own, as :func:`uvicorn` runs an ASGI target.
    (``python -m aiohttp.web`` would log every statement of the store at DEBUG.)"""
    port = free_port()
    command = python("-c", AIOHTTP_RUN, target, str(port))
    async with _serving(
        command, f"aiohttp {target}", port, store_url, ready, ready_status, env
    ) as server:
        yield server


@asynccontextmanager
async def _serving(
    command: list[str],
    name: str,
    port: int,
    store_url: str,
    ready: str,
    status: int,
    env: dict[str, str],
) -> AsyncIterator[Server]:
    async with started(command, env=environment(store_url, **env), name=name) as process:
        base = f"http://127.0.0.1:{port}"
        await _answering(process, base, ready, status)
        yield Server(base, process)
        await process.stop()


async def _answering(process: Process, base: str, ready: str, status: int) -> None:
    async with httpx.AsyncClient(base_url=base) as client:
        try:
            async with asyncio.timeout(30):
                while True:
                    try:
                        if (await client.get(ready)).status_code == status:
                            return
                    except httpx.TransportError:
                        pass
                    if process.returncode is not None:
                        raise process.failure("exited before it served")
                    await asyncio.sleep(0.02)
        except TimeoutError:
            raise process.failure(f"GET {ready} did not answer {status} within 30s") from None


@asynccontextmanager
async def fastapi_example(store_url: str) -> AsyncIterator[str]:
    """docs/examples/fastapi_app.py in a uvicorn process of its own; yields its base URL."""
    async with uvicorn(
        "docs.examples.fastapi_app:api", store_url, ready="/reports/none", ready_status=404
    ) as server:
        yield server.base


@asynccontextmanager
async def in_process(asgi: Any) -> AsyncIterator[str]:
    """A real uvicorn server in this process on a free loopback port, lifespan on; yields its
    base URL (the memory store can serve it: nothing crosses a process)."""
    import uvicorn as uvicorn_server

    server = uvicorn_server.Server(
        uvicorn_server.Config(
            asgi, host="127.0.0.1", port=0, lifespan="on", log_level="warning", access_log=False
        )
    )
    serving = asyncio.create_task(server.serve())
    try:
        await wait_until(lambda: server.started or serving.done(), timeout=30, what="uvicorn")
        assert server.started, "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 30)
