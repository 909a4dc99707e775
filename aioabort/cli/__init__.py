"""The ``aioabort`` command line (extra ``cli``: click and rich).

Every command has a programmatic twin on :class:`aioabort.App`; the command line only parses,
calls it, and prints (a table on a terminal, plain text in a pipe, JSON with ``--json``).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    try:
        from . import _abort, _admin, _demo, _tasks, _worker  # noqa: F401 (each adds its commands)
        from ._common import cli
    except ImportError as exc:  # click or rich missing
        print(
            f"the aioabort command line needs click and rich ({exc.name} is missing): "
            'pip install "aioabort[cli]"',
            file=sys.stderr,
        )
        return 3
    # Python keeps an inherited "ignore SIGINT" (a background job of a shell without job
    # control): take it back, so Ctrl-C ends a live view, a wait, a prompt.
    restore = None
    if threading.current_thread() is threading.main_thread():
        restore = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="aioabort")
    except SystemExit as exit_:  # click always ends with SystemExit in standalone mode
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        if restore is not None:  # main() called in-process (tests): leave it as it was
            signal.signal(signal.SIGINT, restore)
