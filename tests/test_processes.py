"""The launcher the tests start other processes with (tests/_processes.py): what a failure
says, and that nothing it started outlives the test."""

from __future__ import annotations

import os
import signal

import pytest

from ._processes import ROOT, environment, python, run, run_in_terminal, started

TALKS = "import sys; print('one'); print('two'); print('oops', file=sys.stderr)"
#: Says READY, then ignores SIGTERM and waits on stdin (empty: the launcher gives no input).
STUBBORN = (
    "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('READY', flush=True); time.sleep(3600)"
)


async def test_lines_in_order_then_the_rest_and_stderr_kept() -> None:
    async with started(python("-c", TALKS + "; print('three')")) as proc:
        assert await proc.line() == "one"
        assert await proc.exit_code() == 0
        assert await proc.line() == "two"
        assert await proc.rest() == "three\n"
        assert proc.stderr == "oops\n"


async def test_an_output_that_ends_without_the_line_fails_with_stderr() -> None:
    async with started(python("-c", TALKS), name="talker") as proc:
        assert [await proc.line(), await proc.line()] == ["one", "two"]
        with pytest.raises(AssertionError, match=r"(?s)talker: ended its output .*oops"):
            await proc.line()
        with pytest.raises(AssertionError, match=r"(?s)without 'never said'.*oops"):
            await proc.said("never said")


async def test_a_line_that_does_not_come_fails_within_the_bound() -> None:
    async with started(python("-c", STUBBORN)) as proc:
        assert await proc.line() == "READY"
        with pytest.raises(AssertionError, match=r"a line on stdout did not come within 0\.1s"):
            await proc.line(timeout=0.1)


async def test_stop_kills_what_ignores_the_signal_and_fails() -> None:
    async with started(python("-c", STUBBORN)) as proc:
        assert await proc.line() == "READY"
        with pytest.raises(AssertionError, match=r"still running after 0\.2s"):
            await proc.stop(signal.SIGTERM, timeout=0.2)
        assert proc.returncode == -signal.SIGKILL


async def test_nothing_started_outlives_its_block() -> None:
    async with started(python("-c", STUBBORN)) as proc:
        assert await proc.line() == "READY"
        pid = proc.pid
    assert proc.returncode == -signal.SIGKILL
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped: the pid is gone


def test_the_environment_puts_the_repository_first() -> None:
    env = environment("sqlite:///x.db", without=["HOME"], EXTRA="1")
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)
    assert env["AIOABORT_URL"] == "sqlite:///x.db" and env["EXTRA"] == "1"
    assert "HOME" not in env
    done = run(python("-c", "import tests._processes as p; print(p.ROOT)"), cwd=ROOT.parent)
    assert done.stdout.strip() == str(ROOT), done.stderr


def test_a_terminal_is_a_terminal() -> None:
    code, drawn = run_in_terminal(python("-c", "import sys; print(sys.stdout.isatty())"))
    assert code == 0 and drawn.strip() == "True", drawn
