"""Retries on exception (``@app.task(retry_on=..., max_retries=..., retry_backoff=...)``):
the policy, its checks, and the rule that decides whether a run that raised goes back to the
queue. Pure: ``_ending`` applies the rule and writes the requeue.

A retry is a new attempt of the same record: PENDING again, with ``not_before`` set to now
plus the backoff (``retry_backoff`` seconds, doubled at each attempt, at most
:data:`MAX_BACKOFF`); the next claim counts the attempt. An abort is never retried, whatever
the body raised after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._errors import UsageError

#: The longest wait between two attempts, in seconds.
MAX_BACKOFF = 3600.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When a run that raised is tried again.

    :ivar retry_on: the exception classes that are retried (subclasses too).
    :ivar max_retries: how many times a run is retried at most (attempts = 1 + retries).
    :ivar backoff: seconds before the first retry; doubled for each later one.
    """

    retry_on: tuple[type[Exception], ...]
    max_retries: int
    backoff: float

    def delay(self, attempts: int) -> float:
        """Seconds before the retry that follows attempt number ``attempts`` (1 = the first)."""
        return min(MAX_BACKOFF, self.backoff * 2.0 ** max(0, attempts - 1))

    def retries(self, exc: BaseException | None, *, attempts: int, aborted: bool) -> bool:
        """Whether a run that ended with ``exc`` on attempt ``attempts`` goes back to the
        queue: an exception of ``retry_on``, retries left, and no abort requested (an abort
        is never retried)."""
        return not aborted and isinstance(exc, self.retry_on) and 0 < attempts <= self.max_retries


def retry_policy(
    retry_on: object, max_retries: object, retry_backoff: object
) -> RetryPolicy | None:
    """The policy ``@app.task`` was given (``None``: no ``retry_on``, no retries).

    :raises UsageError: for a ``retry_on`` that is not exception classes, a negative or
        non-integer ``max_retries``, or a negative or non-number ``retry_backoff``.
    """
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise UsageError(f"max_retries must be a non-negative int, got {max_retries!r}")
    if (
        isinstance(retry_backoff, bool)
        or not isinstance(retry_backoff, int | float)
        or not (math.isfinite(retry_backoff) and 0 <= retry_backoff <= MAX_BACKOFF)
    ):
        raise UsageError(
            f"retry_backoff must be seconds between 0 and {MAX_BACKOFF:.0f}, got {retry_backoff!r}"
        )
    if retry_on is None or retry_on == ():
        return None
    classes = retry_on if isinstance(retry_on, tuple) else (retry_on,)
    if not all(isinstance(c, type) and issubclass(c, Exception) for c in classes):
        raise UsageError(
            f"retry_on must be an exception class or a tuple of them, got {retry_on!r}"
        )
    return RetryPolicy(classes, max_retries, float(retry_backoff))
