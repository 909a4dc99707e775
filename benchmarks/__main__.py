"""``python -m benchmarks``: aioabort's benchmark suite.

``--smoke`` runs every measurement a few times (seconds; CI runs it so the suite never rots);
the default pass takes DESIGN.md §5's sample sizes and writes ``benchmarks/results/*.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import latency
from ._stats import verdict

RESULTS = Path(__file__).parent / "results"

#: DESIGN.md §5 targets, in milliseconds.
TARGETS = {
    ("sqlite", "same_process", "abort_to_cancel"): {"p50_ms": 1.0, "p99_ms": 3.0},
    ("sqlite", "other_process", "abort_to_cancel"): {"p50_ms": 8.0, "p99_ms": 25.0},
    ("sqlite", "other_process", "abort_to_final_state"): {"p50_ms": 12.0},
}


def _print_table(results: dict[str, Any]) -> None:
    print(
        f"\n{'store':8} {'where':14} {'figure':22} {'n':>4} {'p50':>8} {'p90':>8} "
        f"{'p99':>8} {'max':>8}  target"
    )
    for store, by_where in results["latency"].items():
        for where, figures in by_where.items():
            for figure, s in figures.items():
                targets = TARGETS.get((store, where, figure), {})
                notes = ", ".join(
                    f"{k[:-3]} ≤ {v:g} ms: {verdict(s[k], v)}" for k, v in targets.items()
                )
                print(
                    f"{store:8} {where:14} {figure:22} {s['n']:>4} {s['p50_ms']:>8.2f} "
                    f"{s['p90_ms']:>8.2f} {s['p99_ms']:>8.2f} {s['max_ms']:>8.2f}  {notes}"
                )


async def _run(count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="aioabort-bench-") as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        results: dict[str, Any] = {"latency": {"sqlite": {}}}
        results["latency"]["sqlite"]["same_process"] = await latency.same_process(url, count)
        results["latency"]["sqlite"]["other_process"] = await latency.other_process(url, count)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a few samples of each, no files")
    parser.add_argument("--count", type=int, default=200, help="aborts per measurement")
    args = parser.parse_args()
    count = 10 if args.smoke else args.count
    results = asyncio.run(_run(count))
    results["meta"] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": __import__("os").cpu_count(),
        "count": count,
    }
    _print_table(results)
    if not args.smoke:
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / "latency.json"
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
