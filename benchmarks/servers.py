"""Real uvicorn processes on loopback, for the benchmarks."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    base: str
    proc: asyncio.subprocess.Process


@asynccontextmanager
async def uvicorn(
    app: str,
    store_url: str,
    *,
    ready: str,
    ready_status: int,
    stdout: bool = False,
    env: dict[str, str] | None = None,
) -> AsyncIterator[Server]:
    """One ``uvicorn app`` process on a free loopback port, with ``AIOABORT_URL=store_url``
    (and ``env``); yields once ``GET ready`` answers ``ready_status`` (within 30 s), and stops
    it after.

    :param stdout: capture the server's standard output (``server.proc.stdout``).
    """
    port = free_port()
    command = ["-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--log-level", "warning", "--no-access-log"]
    async with _serving(command, port, store_url, ready, ready_status, stdout, env) as server:
        yield server


#: ``python -c AIOHTTP_RUN module:factory PORT``: an aiohttp server on loopback, quiet.
AIOHTTP_RUN = (
    "import importlib, sys; from aiohttp import web; "
    "module, factory = sys.argv[1].split(':'); "
    "app = getattr(importlib.import_module(module), factory)([]); "
    "web.run_app(app, host='127.0.0.1', port=int(sys.argv[2]), print=None)"
)


@asynccontextmanager
async def aiohttp_web(
    app: str,
    store_url: str,
    *,
    ready: str,
    ready_status: int,
    stdout: bool = False,
    env: dict[str, str] | None = None,
) -> AsyncIterator[Server]:
    """aiohttp's ``web.run_app()`` of the application factory ``app`` (``module:function``,
    called with ``[]``), as :func:`uvicorn` runs an ASGI app. (``python -m aiohttp.web``
    would log every statement of the store at DEBUG.)"""
    port = free_port()
    command = ["-c", AIOHTTP_RUN, app, str(port)]
    async with _serving(command, port, store_url, ready, ready_status, stdout, env) as server:
        yield server


@asynccontextmanager
async def _serving(
    command: list[str],
    port: int,
    store_url: str,
    ready: str,
    ready_status: int,
    stdout: bool,
    env: dict[str, str] | None,
) -> AsyncIterator[Server]:
    import httpx

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *command,
        stdout=asyncio.subprocess.PIPE if stdout else None,
        env={**os.environ, "AIOABORT_URL": store_url, "PYTHONPATH": str(REPO), **(env or {})},
        cwd=REPO,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if (await client.get(ready)).status_code == ready_status:
                        break
                except httpx.TransportError:
                    pass
                if proc.returncode is not None or time.monotonic() > deadline:
                    raise TimeoutError(f"{' '.join(command)} did not start on port {port}")
                await asyncio.sleep(0.02)
        yield Server(base, proc)
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
