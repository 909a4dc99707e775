"""What an abort sweep found: one :class:`SweepRun` per suspension point, in a
:class:`SweepReport`."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._errors import UsageError
from ._state import TaskState


class SweepError(UsageError):
    """The body cannot be swept: its run without an abort failed, hung or broke ``check``,
    or it does not suspend at the same points on every run (it branches on time or
    randomness)."""


@dataclass(frozen=True, slots=True)
class SweepRun:
    """One run of the body with an abort landing at one suspension point.

    :ivar point: the suspension point the abort landed at, from 1.
    :ivar location: ``file.py:LINE`` of your code's frame suspended there.
    :ivar state: the run's record after it ended (``ABORTED`` when the body stopped), or
        ``None`` when there was none.
    :ivar error: what broke, or ``None`` when the run passed: the body did not stop, raised
        another exception, left a task or a ``scope.to_thread`` call running, hung, or
        ``check(run)`` raised.
    :ivar task_id: the run's task id (each run is a task of its own).
    """

    point: int
    location: str
    state: TaskState | None
    error: str | None
    task_id: str = field(compare=False)
    exception: BaseException | None = field(default=None, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        """Whether the run passed."""
        return self.error is None


@dataclass(frozen=True, slots=True)
class SweepReport:
    """Every run of an abort sweep (see :func:`abort_sweep`).

    ``str(report)`` is a table of the runs; :meth:`raise_for_failures` makes a test fail with
    every failing point.

    :ivar points: the body's suspension points in a run without an abort.
    :ivar runs: one :class:`SweepRun` per point, in order.
    """

    points: int
    runs: tuple[SweepRun, ...]

    @property
    def failures(self) -> tuple[SweepRun, ...]:
        """The runs that broke."""
        return tuple(run for run in self.runs if run.error is not None)

    @property
    def ok(self) -> bool:
        """True when the body suspended at least once and every run passed: a body with no
        suspension point was not tested at all, so it is never ok."""
        return self.points > 0 and not self.failures

    def __str__(self) -> str:
        if self.points == 0:
            return _NEVER_SUSPENDED
        failed = len(self.failures)
        summary = "no failures" if not failed else _count(failed, "failure")
        lines = [f"abort_sweep: {_count(self.points, 'suspension point')}, {summary}"]
        width = max(len(run.location) for run in self.runs)
        for run in self.runs:
            state = "-" if run.state is None else run.state.value
            outcome = "ok" if run.error is None else f"FAILED: {run.error}"
            lines.append(f"  point {run.point:<3} {run.location:<{width}}  {state:<8} {outcome}")
        return "\n".join(lines)

    def raise_for_failures(self) -> None:
        """Raise :class:`AssertionError` naming each failing point, where it is and what
        broke; also when the body never suspended (nothing was tested).

        :raises AssertionError: unless :attr:`ok`.
        """
        if self.points == 0:
            raise AssertionError(_NEVER_SUSPENDED)
        failures = self.failures
        if failures:
            lines = [
                f"abort_sweep: {len(failures)} of {_count(self.points, 'point')} failed:",
                *(f"  point {run.point} at {run.location}: {run.error}" for run in failures),
            ]
            raise AssertionError("\n".join(lines))


_NEVER_SUSPENDED = (
    "abort_sweep: the body never suspended (0 suspension points): no abort can land in it, "
    "so nothing was tested"
)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
