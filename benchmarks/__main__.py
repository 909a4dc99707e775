"""``python -m benchmarks``: aioabort's benchmark suite.

``--smoke`` runs every measurement a few times (seconds; CI runs it so the suite never rots);
the default pass takes DESIGN.md §5's sample sizes and writes ``benchmarks/results/``.
PostgreSQL figures use ``AIOABORT_BENCH_POSTGRES_URL`` (default: the local server) in a
schema of their own, dropped afterwards; ``--no-postgres`` skips them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import idle, latency
from ._stats import verdict

RESULTS = Path(__file__).parent / "results"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"

#: DESIGN.md §5 targets: (store, where, figure) -> {stat: limit}.
LATENCY_TARGETS: dict[tuple[str, str, str], dict[str, float]] = {
    ("sqlite", "same_process", "abort_to_cancel"): {"p50_ms": 1.0, "p99_ms": 3.0},
    ("postgres", "same_process", "abort_to_cancel"): {"p50_ms": 1.0, "p99_ms": 3.0},
    ("sqlite", "other_process", "abort_to_cancel"): {"p50_ms": 8.0, "p99_ms": 25.0},
    ("sqlite", "other_process", "abort_to_final_state"): {"p50_ms": 12.0},
    ("postgres", "other_process", "abort_to_cancel"): {"p50_ms": 2.0, "p99_ms": 6.0},
    ("postgres", "other_process", "abort_to_final_state"): {"p50_ms": 4.0},
}


@contextlib.asynccontextmanager
async def _stores(with_postgres: bool) -> AsyncIterator[dict[str, Callable[[], str]]]:
    """Store URL makers: a fresh SQLite file or a fresh PostgreSQL schema per call."""
    with tempfile.TemporaryDirectory(prefix="aioabort-bench-") as tmp:
        schemas: list[str] = []
        counter = iter(range(1_000_000))

        def sqlite() -> str:
            return f"sqlite:///{tmp}/bench-{next(counter)}.db"

        base = os.environ.get("AIOABORT_BENCH_POSTGRES_URL", DEFAULT_POSTGRES)

        def postgres() -> str:
            schema = f"bench_{uuid.uuid4().hex[:10]}"
            schemas.append(schema)
            sep = "&" if "?" in base else "?"
            return f"{base}{sep}aioabort_schema={schema}"

        makers: dict[str, Callable[[], str]] = {"sqlite": sqlite}
        if with_postgres:
            makers["postgres"] = postgres
        try:
            yield makers
        finally:
            if schemas:
                import asyncpg

                conn = await asyncpg.connect(base.split("?", 1)[0])
                try:
                    for schema in schemas:
                        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
                finally:
                    await conn.close()


async def _run(
    count: int, scope_counts: list[int], window: float, memory_count: int, with_postgres: bool
) -> dict[str, Any]:
    results: dict[str, Any] = {"latency": {}, "idle": {}, "memory": {}}
    async with _stores(with_postgres) as stores:
        for store, make in stores.items():
            results["latency"][store] = {
                "same_process": await latency.same_process(make(), count),
                "other_process": await latency.other_process(make(), count),
            }
        for store, make in stores.items():
            results["idle"][store] = [await idle.idle_cost(make(), n, window) for n in scope_counts]
            results["memory"][store] = await idle.memory_per_scope(make(), memory_count)
    return results


def _markdown(results: dict[str, Any]) -> str:
    lines = [
        "## Abort latency (ms)",
        "",
        "| store | where | figure | n | p50 | p90 | p99 | max | target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for store, by_where in results["latency"].items():
        for where, figures in by_where.items():
            for figure, s in figures.items():
                targets = LATENCY_TARGETS.get((store, where, figure), {})
                notes = ", ".join(
                    f"{k[:-3]} ≤ {v:g}: {verdict(s[k], v)}" for k, v in targets.items()
                )
                lines.append(
                    f"| {store} | {where.replace('_', ' ')} | {figure.replace('_', ' ')} | "
                    f"{s['n']} | {s['p50_ms']:.2f} | {s['p90_ms']:.2f} | {s['p99_ms']:.2f} | "
                    f"{s['max_ms']:.2f} | {notes} |"
                )
    lines += [
        "",
        "## Idle cost with open scopes (one process)",
        "",
        "| store | open scopes | watcher statements/s | all statements/s | CPU % of one core |",
        "|---|---|---|---|---|",
    ]
    for store, rows in results["idle"].items():
        for row in rows:
            lines.append(
                f"| {store} | {row['open_scopes']:,} | {row['watcher_statements_per_s']} | "
                f"{row['all_statements_per_s']} | {row['cpu_percent_of_one_core']} |"
            )
    lines += [
        "",
        "## Memory per open scope",
        "",
        "| store | bytes per scope | target |",
        "|---|---|---|",
    ]
    for store, row in results["memory"].items():
        lines.append(
            f"| {store} | {row['bytes_per_scope']:,} | ≤ 4,096: "
            f"{verdict(row['bytes_per_scope'], 4096)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a few samples of each, no files")
    parser.add_argument("--count", type=int, default=200, help="aborts per latency figure")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    args = parser.parse_args()
    if args.smoke:
        settings = {"count": 10, "scope_counts": [1, 100], "window": 0.5, "memory_count": 100}
    else:
        settings = {
            "count": args.count,
            "scope_counts": [1, 100, 1000, 10000],
            "window": 5.0,
            "memory_count": 2000,
        }
    results = asyncio.run(_run(**settings, with_postgres=not args.no_postgres))  # type: ignore[arg-type]
    results["meta"] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        **settings,
    }
    table = _markdown(results)
    print(table)
    if not args.smoke:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "aioabort.json").write_text(json.dumps(results, indent=2) + "\n")
        (RESULTS / "aioabort.md").write_text(table)
        print(f"wrote {RESULTS / 'aioabort.json'} and {RESULTS / 'aioabort.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
