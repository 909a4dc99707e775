"""Metrics and spans through the OpenTelemetry API, read with the SDK's in-memory reader and
exporter (the API allows one provider per process: installed once, for this module)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import aioabort
from aioabort import TaskState

from .conftest import has_state, wait_until

READER = InMemoryMetricReader()
SPANS = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def sdk() -> Iterator[None]:
    metrics.set_meter_provider(MeterProvider(metric_readers=[READER]))
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(SPANS))
    trace.set_tracer_provider(provider)
    yield


def measured(name: str, **attributes: str) -> float:
    """The sum of a counter (or the count of a histogram) over points with ``attributes``."""
    total = 0.0
    data = READER.get_metrics_data()
    if data is None:
        return total
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != name:
                    continue
                points: Any = metric.data.data_points
                for point in points:
                    found = point.attributes or {}
                    if all(found.get(k) == v for k, v in attributes.items()):
                        total += float(getattr(point, "value", None) or point.count)
    return total


def spans_of(task_id: str) -> list[Any]:
    return [
        s
        for s in SPANS.get_finished_spans()
        if (s.attributes or {}).get("aioabort.task_id") == task_id
    ]


async def test_a_run_is_counted_and_traced(app: aioabort.App) -> None:
    SPANS.clear()
    started = measured("aioabort.tasks.started")
    succeeded = measured("aioabort.tasks.finished", state="SUCCESS")
    async with aioabort.abortable("traced", app=app, name="report"):
        current = trace.get_current_span()
    assert measured("aioabort.tasks.started") == started + 1
    assert measured("aioabort.tasks.finished", state="SUCCESS") == succeeded + 1
    (span,) = spans_of("traced")
    assert span.name == "aioabort.task" and span.attributes["aioabort.task_name"] == "report"
    assert span.attributes["aioabort.state"] == "SUCCESS"
    assert current.get_span_context().span_id == span.context.span_id  # current in the body


async def test_an_abort_is_counted_timed_and_an_event(app: aioabort.App) -> None:
    SPANS.clear()
    requested = measured("aioabort.aborts.requested", code="user")
    aborted = measured("aioabort.tasks.finished", state="ABORTED")
    durations = measured("aioabort.abort.duration", code="user")
    entered = asyncio.Event()

    async def body() -> None:
        async with aioabort.abortable("stopped", app=app, suppress=True):
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(body())
    await entered.wait()
    assert await app.handle("stopped").abort("enough") is True
    await asyncio.wait_for(task, 10)
    assert measured("aioabort.aborts.requested", code="user") == requested + 1
    assert measured("aioabort.tasks.finished", state="ABORTED") == aborted + 1
    assert measured("aioabort.abort.duration", code="user") == durations + 1
    data = READER.get_metrics_data()
    assert data is not None
    (histogram,) = [
        m
        for r in data.resource_metrics
        for sc in r.scope_metrics
        for m in sc.metrics
        if m.name == "aioabort.abort.duration"
    ]
    point: Any = histogram.data.data_points[0]
    assert list(point.explicit_bounds)[:3] == [0.001, 0.002, 0.005]  # seconds, not ms
    (span,) = spans_of("stopped")
    assert span.attributes["aioabort.state"] == "ABORTED"
    (event,) = [e for e in span.events if e.name == "aioabort.abort"]
    assert event.attributes["code"] == "user" and event.attributes["message"] == "enough"
    assert (await app.handle("stopped").state()) is TaskState.ABORTED


async def test_an_ignored_abort_is_counted(store_url: str) -> None:
    """``aioabort.aborts.ignored``: a scope still running its grace after the abort."""
    release = asyncio.Event()
    before = measured("aioabort.aborts.ignored", code="user")
    async with aioabort.App(store_url, ignored_abort_after=0.1) as app:

        async def body() -> None:
            async with aioabort.abortable("deaf", app=app, suppress=True):
                with anyio.CancelScope(shield=True):
                    await release.wait()

        task = asyncio.create_task(body())
        await wait_until(lambda: has_state(app, "deaf", TaskState.STARTED))
        await app.handle("deaf").abort("stop")
        await wait_until(lambda: measured("aioabort.aborts.ignored", code="user") > before)
        release.set()
        await task
    assert measured("aioabort.aborts.ignored", code="user") == before + 1
