"""Metrics and traces through the OpenTelemetry API (extra ``otel``).

Every call is a no-op until the application installs an OpenTelemetry SDK (a MeterProvider, a
TracerProvider), and costs a ``None`` check when the API is not installed at all. aioabort
never installs an SDK or an exporter itself.

Instruments (public names: docs/observability.md):

* ``aioabort.tasks.started`` — counter: a scope started its task in this process.
* ``aioabort.tasks.finished`` — counter, attribute ``state``: a scope recorded its task's end.
* ``aioabort.aborts.requested`` — counter, attribute ``code``: this process recorded an abort.
* ``aioabort.aborts.ignored`` — counter, attribute ``code``: a task of this process still ran
  its ``abort_grace`` after its abort reached it.
* ``aioabort.notifier.outages`` — counter, attribute ``notifier`` (its URL without password):
  the notifier was found down (at start, or its connection lost).
* ``aioabort.abort.duration`` — histogram, seconds from the abort request (its ``at``) to the
  moment the body stopped, attribute ``code``.

And a span ``aioabort.task`` per run of a scope (attributes ``aioabort.task_id`` and
``aioabort.task_name``; the end state as ``aioabort.state``), current while the body runs, with
the abort as an event ``aioabort.abort``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ._types import utcnow

try:
    from opentelemetry import context as _context, metrics as _metrics, trace as _trace
except ImportError:  # the extra is not installed: everything below is a no-op
    _metrics = None  # type: ignore[assignment]
    _trace = None  # type: ignore[assignment]
    _context = None  # type: ignore[assignment]

_VERSION = "0.1.0"
#: Bucket bounds of ``aioabort.abort.duration`` (seconds: a millisecond to a minute).
_DURATION_BUCKETS = [
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
]


class _Instruments:
    def __init__(self) -> None:
        assert _metrics is not None and _trace is not None
        meter = _metrics.get_meter("aioabort", _VERSION)
        self.started = meter.create_counter(
            "aioabort.tasks.started", unit="{task}", description="Tasks started by a scope"
        )
        self.finished = meter.create_counter(
            "aioabort.tasks.finished", unit="{task}", description="Task ends recorded by a scope"
        )
        self.aborts = meter.create_counter(
            "aioabort.aborts.requested", unit="{abort}", description="Abort requests recorded"
        )
        self.ignored = meter.create_counter(
            "aioabort.aborts.ignored",
            unit="{abort}",
            description="Aborts a running task still ignored after its grace",
        )
        self.outages = meter.create_counter(
            "aioabort.notifier.outages",
            unit="{outage}",
            description="Times the notifier was found down",
        )
        self.duration = meter.create_histogram(
            "aioabort.abort.duration",
            unit="s",
            description="Seconds from an abort request to the moment its body stopped",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.tracer = _trace.get_tracer("aioabort", _VERSION)


#: Created at import: the API's proxies pick up an SDK installed later.
_INSTRUMENTS: _Instruments | None = _Instruments() if _metrics is not None else None


def abort_requested(code: str) -> None:
    if _INSTRUMENTS is not None:
        _INSTRUMENTS.aborts.add(1, {"code": code})


def abort_ignored(code: str) -> None:
    if _INSTRUMENTS is not None:
        _INSTRUMENTS.ignored.add(1, {"code": code})


def notifier_outage(url: str) -> None:
    if _INSTRUMENTS is not None:
        _INSTRUMENTS.outages.add(1, {"notifier": url})


class TaskSpan:
    """The telemetry of one run of a scope: its span (current while the body runs), and the
    started/finished counters."""

    __slots__ = ("_span", "_token")

    def __init__(self) -> None:
        self._span: Any = None
        self._token: Any = None

    def start(self, task_id: str, name: str | None) -> None:
        if _INSTRUMENTS is None:
            return
        _INSTRUMENTS.started.add(1)
        attributes = {"aioabort.task_id": task_id}
        if name is not None:
            attributes["aioabort.task_name"] = name
        self._span = _INSTRUMENTS.tracer.start_span("aioabort.task", attributes=attributes)
        assert _trace is not None and _context is not None
        self._token = _context.attach(_trace.set_span_in_context(self._span))

    def aborted(self, code: str, message: str) -> None:
        if self._span is not None:
            self._span.add_event("aioabort.abort", {"code": code, "message": message})

    def leave(self) -> None:
        """The body left (the span stops being current; the span itself ends at :meth:`end`)."""
        token, self._token = self._token, None
        if token is not None and _context is not None:
            _context.detach(token)

    def end(self, state: str, *, stopped_at_request: datetime | None, code: str | None) -> None:
        if _INSTRUMENTS is None:
            return
        _INSTRUMENTS.finished.add(1, {"state": state})
        if stopped_at_request is not None and code is not None:
            took = (utcnow() - stopped_at_request).total_seconds()
            _INSTRUMENTS.duration.record(max(took, 0.0), {"code": code})
        span, self._span = self._span, None
        if span is not None:
            span.set_attribute("aioabort.state", state)
            span.end()
