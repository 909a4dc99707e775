"""The other processes a test starts: one way to start them, read them, and stop them.

* :func:`started` runs a command as an ``async with``: its stdout and stderr are read as they
  come (a full pipe never blocks the process), its stderr is kept for the failure messages,
  and it is killed if it still runs at the end. :func:`spawn` is the same without the ``with``
  (for a process the test itself replaces, as the soak does).
* :func:`run` runs a command to its end, captured, within a time bound.
* :func:`in_terminal` and :func:`run_in_terminal` do the same with a pseudo-terminal for the
  process's output (what ``rich`` draws its tables and live views on).
* :func:`python`, :func:`module` and :func:`cli` build a command line; :func:`environment` is
  this process's environment with the repository on ``PYTHONPATH`` (so ``tests.`` and
  ``docs.`` modules import) and, if given, ``AIOABORT_URL``.
* :func:`child_scope` and :func:`worker` start the test suite's own programs:
  ``tests/child_scope.py`` and ``aioabort worker`` on ``tests/worker_app.py``.

Every wait takes a bound and fails with what the process said on stderr.
"""

from __future__ import annotations

import asyncio
import os
import pty
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent

#: The longest line read from a process (asyncio's default, 64 KiB, is short for JSON lines).
_LINE_LIMIT = 2**20

T = TypeVar("T")


def python(*args: str) -> list[str]:
    """``python ARGS``, with this interpreter."""
    return [sys.executable, *args]


def module(name: str, *args: str) -> list[str]:
    """``python -m NAME ARGS``."""
    return python("-m", name, *args)


def cli(*args: str) -> list[str]:
    """``aioabort ARGS`` (the console entry, as ``python -m aioabort``)."""
    return module("aioabort", *args)


def environment(
    url: str | None = None, *, without: Sequence[str] = (), **extra: str
) -> dict[str, str]:
    """This process's environment with the repository first on ``PYTHONPATH``; with ``url``,
    ``AIOABORT_URL`` set to it; the names in ``without`` removed; ``extra`` added."""
    env = {k: v for k, v in os.environ.items() if k not in without}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if url is not None:
        env["AIOABORT_URL"] = url
    env.update(extra)
    return env


def run(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path = ROOT,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` to its end (stdin empty, stdout and stderr captured as text)."""
    return subprocess.run(
        list(command),
        capture_output=True,
        check=False,
        text=True,
        timeout=timeout,
        env=dict(environment() if env is None else env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


class Process:
    """A running process whose output is read as it comes.

    :ivar returncode: its exit status once it ended (``-N``: killed by signal N), else None.
    """

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self._proc = proc
        self.name = name
        self._out: list[str] = []
        self._err: list[str] = []
        self._taken = 0  # stdout lines handed out by line()
        self._news = asyncio.Event()
        assert proc.stdout is not None and proc.stderr is not None
        self._readers = (
            asyncio.create_task(self._drain(proc.stdout, self._out)),
            asyncio.create_task(self._drain(proc.stderr, self._err)),
        )

    async def _drain(self, stream: asyncio.StreamReader, lines: list[str]) -> None:
        try:
            async for raw in stream:
                lines.append(raw.decode(errors="replace"))
                self._wake()
        finally:
            self._wake()  # the end of a stream wakes a waiter too

    def _wake(self) -> None:
        self._news.set()
        self._news = asyncio.Event()

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    @property
    def stdout(self) -> str:
        """Everything it wrote to stdout so far."""
        return "".join(self._out)

    @property
    def stderr(self) -> str:
        """Everything it wrote to stderr so far."""
        return "".join(self._err)

    def failure(self, what: str) -> AssertionError:
        """An error saying ``what`` went wrong, with the process's stderr."""
        return AssertionError(f"{self.name}: {what}; its stderr:\n{self.stderr}")

    async def _until(
        self, stream: int, found: Callable[[], T | None], timeout: float, what: str
    ) -> T:
        """Wait until ``found()`` gives a value; fail once ``timeout`` passes, or once the
        stream (0: stdout, 1: stderr) ended without it."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    news = self._news  # taken before looking: nothing said in between is missed
                    value = found()
                    if value is not None:
                        return value
                    if self._readers[stream].done():
                        raise self.failure(f"ended its output without {what}")
                    await news.wait()
        except TimeoutError:
            raise self.failure(f"{what} did not come within {timeout:g}s") from None

    async def line(self, timeout: float = 30) -> str:
        """The next line of its stdout (without the line break)."""

        def next_line() -> str | None:
            if self._taken == len(self._out):
                return None
            self._taken += 1
            return self._out[self._taken - 1].rstrip("\r\n")

        return await self._until(0, next_line, timeout, "a line on stdout")

    async def said(self, text: str, timeout: float = 30) -> None:
        """Wait until ``text`` appears on its stderr."""
        await self._until(1, lambda: True if text in self.stderr else None, timeout, repr(text))

    async def rest(self, timeout: float = 30) -> str:
        """The stdout :meth:`line` has not handed out, once the process closed it."""
        try:
            await asyncio.wait_for(asyncio.shield(self._readers[0]), timeout)
        except TimeoutError:
            raise self.failure(f"stdout still open after {timeout:g}s") from None
        rest = "".join(self._out[self._taken :])
        self._taken = len(self._out)
        return rest

    def send_signal(self, sig: int) -> None:
        self._proc.send_signal(sig)

    async def wait(self) -> int:
        """Its exit status, once it exited (as :meth:`asyncio.subprocess.Process.wait`: no
        bound of its own; :meth:`exit_code` has one)."""
        return await self._proc.wait()

    async def exit_code(self, timeout: float = 60) -> int:
        """Wait for it to exit (and for the last of its output); its exit status."""
        try:
            code = await asyncio.wait_for(self._proc.wait(), timeout)
            # (shielded: a reader the bound cuts short would lose the rest of the output)
            await asyncio.wait_for(asyncio.shield(asyncio.gather(*self._readers)), timeout)
        except TimeoutError:
            raise self.failure(f"still running after {timeout:g}s") from None
        return code

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Send ``sig`` and wait for the exit; after ``timeout``, kill it and fail."""
        if self._proc.returncode is None:
            self._proc.send_signal(sig)
        try:
            return await self.exit_code(timeout)
        except AssertionError:
            await self.kill()
            raise

    async def kill(self) -> None:
        """Kill it (if it still runs) and reap it; its output is read to the end."""
        if self._proc.returncode is None:
            self._proc.kill()
        await self._proc.wait()
        await asyncio.gather(*self._readers, return_exceptions=True)


async def spawn(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path = ROOT,
    name: str | None = None,
) -> Process:
    """Start ``command`` (stdin empty); see :func:`started`. The caller kills it."""
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(environment() if env is None else env),
        cwd=cwd,
        limit=_LINE_LIMIT,
    )
    return Process(proc, name or " ".join(command[1:])[:80])


@asynccontextmanager
async def started(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path = ROOT,
    name: str | None = None,
) -> AsyncIterator[Process]:
    """``command`` running (by default in the repository with :func:`environment`); killed at
    the end if it still runs."""
    process = await spawn(command, env=env, cwd=cwd, name=name)
    try:
        yield process
    finally:
        await process.kill()


# -- a pseudo-terminal -----------------------------------------------------------------------


class Terminal:
    """A process whose stdout and stderr are a pseudo-terminal; :attr:`screen` holds every
    byte it drew there."""

    def __init__(self, proc: asyncio.subprocess.Process, leader: int) -> None:
        self._proc = proc
        self._leader = leader
        self.screen = bytearray()
        self._news = asyncio.Event()
        self._closed = asyncio.Event()
        asyncio.get_running_loop().add_reader(leader, self._readable)

    def _readable(self) -> None:
        try:
            chunk = os.read(self._leader, 65536)
        except OSError:  # EIO: every process closed the terminal
            chunk = b""
        if chunk:
            self.screen.extend(chunk)
        else:
            asyncio.get_running_loop().remove_reader(self._leader)
            self._closed.set()
        self._news.set()
        self._news = asyncio.Event()

    @property
    def text(self) -> str:
        return self.screen.decode("utf-8", "replace")

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    def send_signal(self, sig: int) -> None:
        self._proc.send_signal(sig)

    async def shows(self, text: str, timeout: float = 30) -> None:
        """Wait until ``text`` was drawn."""
        try:
            async with asyncio.timeout(timeout):
                while text.encode() not in self.screen:
                    news = self._news
                    if self._closed.is_set():
                        raise AssertionError(f"the terminal closed without {text!r}:\n{self.text}")
                    await news.wait()
        except TimeoutError:
            raise AssertionError(f"{text!r} not drawn within {timeout:g}s:\n{self.text}") from None

    async def exit_code(self, timeout: float = 60) -> int:
        """Wait for the exit and for the terminal to close; the exit status."""
        try:
            code = await asyncio.wait_for(self._proc.wait(), timeout)
            await asyncio.wait_for(self._closed.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"still running after {timeout:g}s:\n{self.text}") from None
        return code

    def close(self) -> None:
        if not self._closed.is_set():
            asyncio.get_running_loop().remove_reader(self._leader)
        os.close(self._leader)


@asynccontextmanager
async def in_terminal(
    command: Sequence[str], *, columns: int, stdin: bool = False
) -> AsyncIterator[Terminal]:
    """``command`` with its stdout and stderr (and with ``stdin``, its stdin) on a new
    pseudo-terminal ``columns`` wide (``TERM=xterm``); killed at the end if it still runs."""
    leader, follower = pty.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=follower if stdin else asyncio.subprocess.DEVNULL,
            stdout=follower,
            stderr=follower,
            env=environment(COLUMNS=str(columns), TERM="xterm"),
            cwd=ROOT,
        )
    except BaseException:
        os.close(leader)
        raise
    finally:
        os.close(follower)  # the child holds it now: its exit closes the terminal
    terminal = Terminal(proc, leader)
    try:
        yield terminal
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        terminal.close()


def run_in_terminal(
    command: Sequence[str], *, columns: int = 400, timeout: float = 60
) -> tuple[int, str]:
    """Run ``command`` to its end on a pseudo-terminal: its exit status and what it drew."""

    async def drawn() -> tuple[int, str]:
        async with in_terminal(command, columns=columns) as terminal:
            return await terminal.exit_code(timeout), terminal.text

    return asyncio.run(drawn())


# -- the test suite's own programs -----------------------------------------------------------


@asynccontextmanager
async def child_scope(url: str, task_id: str, *options: str) -> AsyncIterator[Process]:
    """``tests/child_scope.py``: a process running one abort scope (see its options)."""
    async with started(module("tests.child_scope", url, task_id, *options)) as child:
        yield child


@asynccontextmanager
async def worker(url: str, *options: str, ready: bool = True) -> AsyncIterator[Process]:
    """``aioabort worker tests.worker_app:app`` on ``url`` (log level ``warning`` unless
    ``options`` say otherwise); with ``ready``, once it printed its banner."""
    level = [] if "--log-level" in options else ["--log-level", "warning"]
    command = cli("--db", url, "worker", "tests.worker_app:app", *level, *options)
    async with started(command, name="aioabort worker") as process:
        if ready:
            await process.said("aioabort worker:")
        yield process
