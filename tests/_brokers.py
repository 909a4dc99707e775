"""Real message servers for the tests: ``redis-server`` and ``nats-server`` (Debian packages),
each started on a free loopback port of its own, stopped after, and able to be killed and
restarted on the same port to test outages. Nothing here uses a server left running.

Without the program: the test is skipped, or fails when ``AIOABORT_REQUIRE_REDIS=1`` /
``AIOABORT_REQUIRE_NATS=1`` (CI sets both).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REQUIRE = {
    "redis": os.environ.get("AIOABORT_REQUIRE_REDIS") == "1",
    "nats": os.environ.get("AIOABORT_REQUIRE_NATS") == "1",
}
_PROGRAMS = {"redis": "redis-server", "nats": "nats-server"}


def _program(kind: str) -> str:
    name = _PROGRAMS[kind]
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/usr/local/bin")
    if found is None:
        message = f"{name} is not installed"
        if REQUIRE[kind]:
            pytest.fail(f"{message} (AIOABORT_REQUIRE_{kind.upper()}=1)")
        pytest.skip(message)
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Broker:
    """One server process on a fixed loopback port: ``url``, ``kill()`` (SIGKILL, as an outage)
    and ``start()`` again on the same port."""

    def __init__(self, kind: str, program: str, workdir: Path) -> None:
        self.kind = kind
        self.port = _free_port()
        #: NATS: the HTTP monitoring port (``/connz`` counts the connected clients).
        self.monitor_port = _free_port()
        self._program = program
        self._workdir = workdir
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{self.kind}://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _command(self) -> list[str]:
        if self.kind == "redis":
            return [
                self._program,
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self._workdir)),
            ]
        return [
            self._program,
            *("-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor_port)),
        ]

    def start(self, timeout: float = 20.0) -> None:
        """Starts the server and returns once its port accepts connections."""
        assert not self.running, f"{self.kind} is already running"
        log = open(self._workdir / f"{self.kind}.log", "ab")  # noqa: SIM115 - the child keeps it
        self._process = subprocess.Popen(self._command(), stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited at start: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"{self.kind} did not accept connections within {timeout}s")

    def kill(self) -> None:
        """SIGKILL, as a crash or an outage would: nothing is flushed or said to clients."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=20)
            self._process = None

    def log(self) -> str:
        path = self._workdir / f"{self.kind}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def broker(kind: str) -> Iterator[Broker]:
    """Yields a started ``Broker`` of ``kind`` (``"redis"`` or ``"nats"``), killed after."""
    program = _program(kind)
    workdir = Path(tempfile.mkdtemp(prefix=f"aioabort-{kind}-"))
    own = Broker(kind, program, workdir)
    own.start()
    try:
        yield own
    finally:
        own.kill()
        shutil.rmtree(workdir, ignore_errors=True)
