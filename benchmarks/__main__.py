"""``python -m benchmarks``: aioabort and the systems users would pick instead, in one run.

Modes: ``--smoke`` (seconds, no peers; CI runs it so the suite never rots), ``--quick`` (about
two minutes), and the default full pass (DESIGN.md §5's sample sizes). Results go to
``benchmarks/results/`` as JSON, a Markdown table with the ratios, and PNG plots.
PostgreSQL figures use ``AIOABORT_BENCH_POSTGRES_URL`` (default: the local server), each in a
schema of its own that is dropped afterwards. Peers come from the ``bench`` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import platform
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import floor, flow, idle, latency, throughput, web
from ._stats import verdict

RESULTS = Path(__file__).parent / "results"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"

MODES: dict[str, dict[str, Any]] = {
    "smoke": {
        "count": 10,
        "flow_count": 5,
        "scope_counts": [1, 100],
        "window": 0.5,
        "memory_count": 100,
        "throughput": 300,
        "peers": False,
    },
    "quick": {
        "count": 60,
        "flow_count": 30,
        "scope_counts": [1, 1000],
        "window": 2.0,
        "memory_count": 1000,
        "throughput": 2000,
        "peers": True,
    },
    "full": {
        "count": 200,
        "flow_count": 200,
        "scope_counts": [1, 100, 1000, 10000],
        "window": 5.0,
        "memory_count": 2000,
        "throughput": 5000,
        "peers": True,
    },
}

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
        base = os.environ.get("AIOABORT_BENCH_POSTGRES_URL", DEFAULT_POSTGRES)

        def sqlite() -> str:
            return f"sqlite:///{tmp}/bench-{next(counter)}.db"

        def postgres() -> str:
            schema = f"bench_{uuid.uuid4().hex[:10]}"
            schemas.append(schema)
            return f"{base}{'&' if '?' in base else '?'}aioabort_schema={schema}"

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


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


async def _run(
    mode: dict[str, Any], with_postgres: bool, log: Callable[[str], None]
) -> dict[str, Any]:
    results: dict[str, Any] = {
        "latency": {},
        "flow": {},
        "web": {},
        "check": {},
        "idle": {},
        "memory": {},
        "throughput": {},
        "peers": {},
    }
    async with _stores(with_postgres) as stores:
        for store, make in stores.items():
            log(f"latency on {store}")
            results["latency"][store] = {
                "same_process": await latency.same_process(make(), mode["count"]),
                "other_process": await latency.other_process(make(), mode["count"]),
            }
            log(f"the Celery flow (worker process) on {store}")
            results["flow"][store] = await flow.abort_latency(make(), mode["flow_count"])
            log(f"abort through the web router on {store}")
            results["web"][store] = await web.router_latency(make(), mode["flow_count"])
            log(f"throughput on {store}")
            results["throughput"][store] = await throughput.run(make(), mode["throughput"])
            if store == "sqlite":
                log("the bare SQLite loop under throughput (the floor)")
                results["floor"] = await asyncio.to_thread(floor.run, 10 * mode["throughput"])
                ratio = (
                    results["throughput"][store]["tasks_per_s"] / results["floor"]["tasks_per_s"]
                )
                log(
                    f"  aioabort {results['throughput'][store]['tasks_per_s']:,.0f}/s, floor "
                    f"{results['floor']['tasks_per_s']:,.0f}/s: {ratio:.2f}x of the floor"
                )
        results["check"]["aioabort"] = await flow.check_cost(stores["sqlite"]())
        for store, make in stores.items():
            log(f"idle cost and memory on {store}")
            results["idle"][store] = [
                await idle.idle_cost(make(), n, mode["window"]) for n in mode["scope_counts"]
            ]
            results["memory"][store] = await idle.memory_per_scope(make(), mode["memory_count"])
    if mode["peers"]:
        await _peers(mode, with_postgres, results["peers"], log)
    return results


async def _peers(
    mode: dict[str, Any], with_postgres: bool, peers: dict[str, Any], log: Callable[[str], None]
) -> None:
    """The systems users would pick instead, each measured the way aioabort is."""
    count, tasks = mode["flow_count"], min(mode["throughput"], 2000)
    if _have("celery") and _have("sqlalchemy"):
        from .peers import celery_bench

        log("peer: Celery's abortable (SQLite broker and backend)")
        peers["celery_sqlite"] = {
            "flow": await celery_bench.abort_latency(count),
            "throughput": await celery_bench.throughput(min(tasks, 500)),
        }
    else:
        log('peer Celery skipped: pip install -e ".[bench]"')
    if _have("procrastinate") and _have("psycopg") and with_postgres:
        from .peers import queues_bench

        log("peer: procrastinate (PostgreSQL, LISTEN/NOTIFY)")
        peers["procrastinate_postgres"] = {
            "flow": await queues_bench.procrastinate_latency(count),
            "throughput": await queues_bench.procrastinate_throughput(tasks),
        }
    else:
        log('peer procrastinate skipped: pip install -e ".[bench]" (and PostgreSQL)')
    if _have("arq") and await _redis_up():
        from .peers import queues_bench

        log("peer: arq (Redis; aborts polled every 0.5 s, its default)")
        peers["arq_redis"] = {
            "flow": await queues_bench.arq_latency(max(5, count // 4), poll_delay=0.5),
            "throughput": await queues_bench.arq_throughput(tasks, poll_delay=0.01),
        }
    else:
        log('peer arq skipped: pip install -e ".[bench]" and a Redis at 127.0.0.1:6379')


async def _redis_up() -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", 6379), 2)
    except (OSError, TimeoutError):
        return False
    writer.close()
    await writer.wait_closed()
    return True


PEER_LABELS = {
    "celery_sqlite": "Celery abortable (SQLite)",
    "procrastinate_postgres": "procrastinate (PostgreSQL)",
    "arq_redis": "arq (Redis)",
}


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def _markdown(results: dict[str, Any]) -> str:
    out = [
        "## Abort latency (ms): `abort()` → the body's `CancelledError`",
        "",
        "| store | where | figure | n | p50 | p90 | p99 | max | DESIGN.md §5 target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for store, by_where in results["latency"].items():
        for where, figures in by_where.items():
            for figure, s in figures.items():
                targets = LATENCY_TARGETS.get((store, where, figure), {})
                notes = ", ".join(
                    f"{k[:-3]} ≤ {v:g}: {verdict(s[k], v)}" for k, v in targets.items()
                )
                out.append(
                    f"| {store} | {where.replace('_', ' ')} | {figure.replace('_', ' ')} | "
                    f"{s['n']} | {s['p50_ms']:.2f} | {s['p90_ms']:.2f} | {s['p99_ms']:.2f} | "
                    f"{s['max_ms']:.2f} | {notes} |"
                )
    celery = results["peers"].get("celery_sqlite")
    out += [
        "",
        "## The Celery flow: producer here, worker in another process",
        "",
        "| system | n | p50 (ms) | p99 (ms) | aborted task ends | p50 / Celery's p50 |",
        "|---|---|---|---|---|---|",
    ]
    rows = [(f"aioabort ({store})", r) for store, r in results["flow"].items()]
    rows += [
        (
            PEER_LABELS[name] + (" (0.5 s abort poll, its default)" if name == "arq_redis" else ""),
            peer["flow"],
        )
        for name, peer in results["peers"].items()
    ]
    for label, r in rows:
        s = r["abort_to_cancel"]
        ratio = _ratio(s["p50_ms"], celery["flow"]["abort_to_cancel"]["p50_ms"]) if celery else ""
        ends = ", ".join(
            f"{k} {v}"
            for k, v in r.get("final_state_of_aborted_task", {"(not recorded)": ""}).items()
        )
        out.append(
            f"| {label} | {s['n']} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {ends} | {ratio} |"
        )
    out += [
        "",
        (
            "## Through the web router: `POST /tasks/{id}/abort` on instance B until the handler "
            "on instance A is cancelled"
        ),
        "",
        "| store | n | p50 (ms) | p90 (ms) | p99 (ms) |",
        "|---|---|---|---|---|",
    ]
    for store, r in results["web"].items():
        w = r["abort_to_cancel"]
        out.append(
            f"| {store} | {w['n']} | {w['p50_ms']:.2f} | {w['p90_ms']:.2f} | {w['p99_ms']:.2f} |"
        )
    out += [
        "",
        "## Cost of one abort check inside the task",
        "",
        "| system | µs per check |",
        "|---|---|",
        f"| aioabort `scope.is_aborted()` | {results['check']['aioabort']['is_aborted_check_us']} |",
    ]
    if celery:
        ours = results["check"]["aioabort"]["is_aborted_check_us"]
        theirs = celery["flow"]["is_aborted_check_us"]
        out.append(
            f"| Celery `self.is_aborted()` (SQLite backend) | {theirs} ({theirs / ours:,.0f}x aioabort) |"
        )
    out += [
        "",
        "## Queue throughput: no-op tasks, one worker process, end to end",
        "",
        "| system | tasks | tasks/s | target ≥ 1,500 | aioabort (same store) / peer |",
        "|---|---|---|---|---|",
    ]
    for store, r in results["throughput"].items():
        out.append(
            f"| aioabort ({store}) | {r['tasks']} | {r['tasks_per_s']:,.0f} | "
            f"{verdict(-r['tasks_per_s'], -1500)} | |"
        )
    if "floor" in results:
        r = results["floor"]
        ours = results["throughput"].get("sqlite", {}).get("tasks_per_s")
        out.append(
            f"| the floor: a bare two-process SQLite loop, same writes per task | {r['tasks']} | "
            f"{r['tasks_per_s']:,.0f} | | {_ratio(ours, r['tasks_per_s']) if ours else ''} |"
        )
    peer_store = {
        "celery_sqlite": "sqlite",
        "procrastinate_postgres": "postgres",
        "arq_redis": "sqlite",
    }
    for name, peer in results["peers"].items():
        r = peer["throughput"]
        ours = results["throughput"].get(peer_store[name], {}).get("tasks_per_s")
        ratio = _ratio(ours, r["tasks_per_s"]) if ours else ""
        note = " (10 ms queue poll)" if name == "arq_redis" else ""
        out.append(
            f"| {PEER_LABELS[name]}{note} | {r['tasks']} | {r['tasks_per_s']:,.0f} | | {ratio} |"
        )
    out += [
        "",
        "## Idle cost with open scopes (one process)",
        "",
        "| store | open scopes | watcher statements/s | all statements/s | CPU % of one core |",
        "|---|---|---|---|---|",
    ]
    for store, rows_ in results["idle"].items():
        for row in rows_:
            out.append(
                f"| {store} | {row['open_scopes']:,} | {row['watcher_statements_per_s']} | "
                f"{row['all_statements_per_s']} | {row['cpu_percent_of_one_core']} |"
            )
    out += [
        "",
        "## Memory per open scope",
        "",
        "| store | bytes per scope | target |",
        "|---|---|---|",
    ]
    for store, row in results["memory"].items():
        out.append(
            f"| {store} | {row['bytes_per_scope']:,} | ≤ 4,096: "
            f"{verdict(row['bytes_per_scope'], 4096)} |"
        )
    return "\n".join(out) + "\n"


def _plots(results: dict[str, Any]) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written: list[Path] = []
    fig, ax = plt.subplots(figsize=(8, 4))
    labels, p50, p99 = [], [], []
    for store, by_where in results["latency"].items():
        for where, figures in by_where.items():
            labels.append(f"{store}\n{where.replace('_', ' ')}")
            p50.append(figures["abort_to_cancel"]["p50_ms"])
            p99.append(figures["abort_to_cancel"]["p99_ms"])
    for store, r in results["flow"].items():
        labels.append(f"{store}\nworker flow")
        p50.append(r["abort_to_cancel"]["p50_ms"])
        p99.append(r["abort_to_cancel"]["p99_ms"])
    for name, peer in results["peers"].items():
        if name == "arq_redis":
            continue  # ~500 ms: off this scale; it is in the table
        labels.append(PEER_LABELS[name].replace(" (", "\n("))
        p50.append(peer["flow"]["abort_to_cancel"]["p50_ms"])
        p99.append(peer["flow"]["abort_to_cancel"]["p99_ms"])
    x = range(len(labels))
    ax.bar([i - 0.2 for i in x], p50, width=0.4, label="p50")
    ax.bar([i + 0.2 for i in x], p99, width=0.4, label="p99")
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylabel("ms from abort() to CancelledError")
    ax.set_title("Abort latency (arq, ~490 ms with its 0.5 s poll, is off the scale)")
    ax.legend()
    fig.tight_layout()
    path = RESULTS / "latency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(6, 4))
    for store, rows in results["idle"].items():
        ax.plot(
            [r["open_scopes"] for r in rows],
            [r["watcher_statements_per_s"] for r in rows],
            marker="o",
            label=f"{store}: watcher",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("open scopes in the process")
    ax.set_ylabel("statements per second")
    ax.set_title("The watcher's cost does not grow with open scopes")
    ax.legend()
    fig.tight_layout()
    path = RESULTS / "statements.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--smoke", action="store_true", help="seconds; no peers, no files")
    group.add_argument("--quick", action="store_true", help="about two minutes")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--no-peers", action="store_true", help="aioabort only")
    parser.add_argument(
        "--report",
        action="store_true",
        help="only rewrite results.md and the plots from results/results.json",
    )
    args = parser.parse_args()
    if args.report:
        saved = json.loads((RESULTS / "results.json").read_text())
        meta = saved["meta"]
        (RESULTS / "results.md").write_text(
            f"Measured {meta['when']} ({meta['mode']} pass, Python {meta['python']}, "
            f"{meta['cpus']} CPUs).\n\n" + _markdown(saved)
        )
        for path in [RESULTS / "results.md", *_plots(saved)]:
            print(f"wrote {path}")
        return 0
    name = "smoke" if args.smoke else "quick" if args.quick else "full"
    mode = dict(MODES[name])
    if args.no_peers:
        mode["peers"] = False

    def log(text: str) -> None:
        print(f"[benchmarks] {text}", flush=True)

    results = asyncio.run(_run(mode, not args.no_postgres, log))
    results["meta"] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": name,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        **mode,
    }
    table = _markdown(results)
    print(table)
    if name != "smoke":
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (RESULTS / "results.md").write_text(
            f"Measured {results['meta']['when']} ({name} pass, Python "
            f"{results['meta']['python']}, {results['meta']['cpus']} CPUs).\n\n" + table
        )
        for path in [RESULTS / "results.json", RESULTS / "results.md", *_plots(results)]:
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
