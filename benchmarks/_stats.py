"""Summaries for benchmark samples: medians and percentiles, never a single time."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Sequence
from typing import Any


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``samples``, by linear interpolation."""
    ordered = sorted(samples)
    if not ordered:
        raise ValueError("no samples")
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary_ms(samples_s: Sequence[float]) -> dict[str, Any]:
    """p50/p90/p99/max/mean in milliseconds for samples in seconds."""
    ms = [s * 1000 for s in samples_s]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 0.50), 3),
        "p90_ms": round(percentile(ms, 0.90), 3),
        "p99_ms": round(percentile(ms, 0.99), 3),
        "max_ms": round(max(ms), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
    }


def verdict(value: float, target: float) -> str:
    return "meets" if value <= target else "misses"


async def work_forever(step: float = 0.01) -> None:
    """The benchmark body: work that awaits every ``step`` seconds, until cancelled."""
    while True:  # noqa: ASYNC110 - this is the work being measured, not a wait for an event
        await asyncio.sleep(step)
