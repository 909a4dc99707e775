"""The App's settings and their checks, in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

from . import notifiers
from ._errors import UsageError
from ._state import IGNORED_ABORT_AFTER

#: The longest time limit a task may have, in seconds (about 115 days).
MAX_TIME_LIMIT = 10**7


def check_time_limit(time_limit: object, what: str = "time_limit") -> float | None:
    """Return ``time_limit`` if it is ``None`` or a usable number of seconds (``what``: the
    setting's name in the error, ``time_limit`` or ``abort_grace``).

    :raises UsageError: otherwise (before anything is written).
    """
    if time_limit is None:
        return None
    if (
        isinstance(time_limit, bool)
        or not isinstance(time_limit, int | float)
        or not 0 < time_limit < MAX_TIME_LIMIT
    ):
        raise UsageError(f"{what} must be a positive number of seconds, got {time_limit!r}")
    return float(time_limit)


def notifier_url(notifier: str | None) -> str | None:
    """The notifier an App uses: ``notifier=`` if given, else ``$AIOABORT_NOTIFIER`` (what
    ``aioabort --notifier URL worker`` sets), else none."""
    return notifier if notifier is not None else os.environ.get("AIOABORT_NOTIFIER") or None


@dataclass(frozen=True, slots=True)
class AppSettings:
    """The knobs of an :class:`~aioabort.App` (its keyword arguments), checked when made.

    :raises UsageError: for a setting out of its range.
    """

    heartbeat_interval: float = 5.0
    stale_after: float = 30.0
    shutdown_grace: float = 5.0
    poll_interval: float | None = None
    ignored_abort_after: float = IGNORED_ABORT_AFTER
    retention: timedelta | None = None
    #: A notifier's URL (``redis://...``, ``nats://...``), checked and its engine loaded.
    notifier: str | None = None

    def __post_init__(self) -> None:
        if self.notifier is not None:
            notifiers.check_url(self.notifier)
        if not self.heartbeat_interval > 0:
            raise UsageError(
                f"heartbeat_interval must be positive, got {self.heartbeat_interval!r}"
            )
        if not self.stale_after > self.heartbeat_interval:
            raise UsageError(
                f"stale_after ({self.stale_after!r}) must be longer than heartbeat_interval "
                f"({self.heartbeat_interval!r})"
            )
        if self.retention is not None and (
            not isinstance(self.retention, timedelta) or self.retention.total_seconds() <= 0
        ):
            raise UsageError(
                f"retention must be a positive timedelta or None, got {self.retention!r}"
            )
        if not self.ignored_abort_after > 0:
            raise UsageError(
                f"ignored_abort_after must be positive seconds, got {self.ignored_abort_after!r}"
            )
        if self.poll_interval is not None and not 0 < self.poll_interval <= 60:
            raise UsageError(
                f"poll_interval must be within (0, 60] seconds, got {self.poll_interval!r}"
            )
