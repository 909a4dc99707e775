"""A fleet on one store (DESIGN rule 13): what idle processes, open scopes, listeners and
processes on one SQLite file cost, next to procrastinate measured the same way in the run.

    python -m benchmarks.fleet [--smoke | --quick]

* **idle fleet** (PostgreSQL): P idle Apps spread over several processes, in a database of
  their own, and beside them P idle procrastinate workers in another database, grouped the
  same way. Transactions per second from the server's own counters (``pg_stat_database``;
  each aioabort statement outside a flow is one transaction), connections from
  ``pg_stat_activity``.
* **open scopes** (PostgreSQL): CPU per delivered abort with N = 1,000 / 20,000 / 100,000
  scopes open in the consumer App, aborted one at a time from another App.
* **listeners** (PostgreSQL): abort latency (``abort()`` to the body's ``CancelledError``)
  with no other App listening, then with 40 idle Apps in four other processes listening.
* **SQLite, 20 processes** on one file, each with one open scope: their idle CPU, and the
  latency of aborting each from this process (read on the machine's monotonic clock).
* **idle waiters** (both stores): the producer's CPU and statements per finished task with
  W = 0 / 100 / 1,000 idle ``handle.wait()`` calls (:mod:`benchmarks.waiters`).

Results go to ``benchmarks/results/fleet.json``, ``fleet.md`` and ``fleet.png`` (skipped in
``--smoke``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aioabort

from ._procs import REPO
from ._stats import summary_ms

RESULTS = Path(__file__).parent / "results"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"

MODES: dict[str, dict[str, Any]] = {
    "smoke": {
        "fleet": [2],
        "window": 3.0,
        "settle": 1.0,
        "scopes": [100, 1000],
        "aborts": 20,
        "listeners": 4,
        "latency_n": 10,
        "sqlite_procs": 3,
        "waiters": [0, 100],
        "waiter_tasks": 50,
    },
    "quick": {
        "fleet": [8, 40],
        "window": 20.0,
        "settle": 20.0,
        "scopes": [1000, 20000],
        "aborts": 100,
        "listeners": 40,
        "latency_n": 60,
        "sqlite_procs": 20,
        "waiters": [0, 100, 1000],
        "waiter_tasks": 500,
    },
    "full": {
        "fleet": [8, 40],  # 80 of each would pass the server's default max_connections (100)
        "window": 40.0,
        "settle": 20.0,
        "scopes": [1000, 20000, 100000],
        "aborts": 200,
        "listeners": 40,
        "latency_n": 200,
        "sqlite_procs": 20,
        "waiters": [0, 100, 1000],
        "waiter_tasks": 1500,
    },
}

#: The first round's figures, from its issue and DESIGN.md §5, drawn beside this run's.
FIRST_ROUND = {
    "transactions_per_app_s": 2.4,  # 40 idle Apps ran 96 statements/s
    "cpu_ms_per_abort": {1000: 0.07, 20000: 0.86},
    # 2,000 tasks with W idle waiters cost the producer 0.84 / 22 / 70 s of CPU (PostgreSQL)
    # and 0.96 / 30 / 152 s (SQLite) at W = 0 / 200 / 1,000.
    "waiter_cpu_ms_per_task": {
        "postgres": {0: 0.42, 200: 11.0, 1000: 35.0},
        "sqlite": {0: 0.48, 200: 15.0, 1000: 76.0},
    },
}

#: Targets (DESIGN.md §5).
TARGETS = {
    "idle_statements_per_app_s": 0.5,
    "connections_per_app": 2,
    "cpu_per_abort_ratio_20k_1k": 1.5,
    "listeners_p50_ms": 3.0,
    "listeners_p99_ms": 10.0,
}


def _admin() -> str:
    return os.environ.get("AIOABORT_BENCH_POSTGRES_URL", DEFAULT_POSTGRES).split("?", 1)[0]


@contextlib.asynccontextmanager
async def database(prefix: str) -> AsyncIterator[str]:
    """A throwaway database (its own counters in ``pg_stat_database``), dropped afterwards."""
    import asyncpg

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = _admin()
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield admin.rsplit("/", 1)[0] + "/" + name
    finally:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


async def member(*args: str) -> asyncio.subprocess.Process:
    """A :mod:`benchmarks.fleet_member` process, once it printed READY."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.fleet_member",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 120)
    if line.strip() != b"READY":
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"fleet member {args[0]} did not start: {line!r}")
    return proc


async def stop(procs: list[asyncio.subprocess.Process]) -> None:
    for proc in procs:
        if proc.stdin is not None:
            proc.stdin.close()
    for proc in procs:
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _server_counters(dsn: str) -> tuple[int, int]:
    """(transactions committed and rolled back, connections) of the database of ``dsn``, read
    from the admin database (so the reading is not counted)."""
    import asyncpg

    name = dsn.rsplit("/", 1)[1]
    conn = await asyncpg.connect(_admin())
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        xacts = await conn.fetchval(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1", name
        )
        connections = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", name
        )
    finally:
        await conn.close()
    return int(xacts or 0), int(connections)


async def _measure_idle(
    dsn: str, procs: list[asyncio.subprocess.Process], window: float, settle: float
) -> Any:
    # The fleet's startup must be over and counted before the window opens: an idle backend
    # reports its counters up to 10 s late (PostgreSQL's PGSTAT_IDLE_INTERVAL).
    await asyncio.sleep(settle)
    before, connections = await _server_counters(dsn)
    await asyncio.sleep(window)
    after, _ = await _server_counters(dsn)
    await stop(procs)
    return (after - before) / window, connections


def _spread(count: int) -> list[int]:
    """``count`` members over at most four processes."""
    groups = min(4, count)
    return [count // groups + (1 if i < count % groups else 0) for i in range(groups)]


async def idle_fleet(size: int, window: float, settle: float, with_peer: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"processes": len(_spread(size)), "members": size}
    async with database("bench_fleet") as dsn:
        url = f"{dsn}?aioabort_schema=fleet"
        async with aioabort.App(url):  # the schema, created once before the fleet opens
            pass
        procs = [await member("apps", url, str(n)) for n in _spread(size)]
        rate, connections = await _measure_idle(dsn, procs, window, settle)
        row["aioabort_xacts_per_s"] = round(rate, 2)
        row["aioabort_xacts_per_app_s"] = round(rate / size, 3)
        row["aioabort_connections_per_app"] = round(connections / size, 2)
    if with_peer:
        from .peers.queues_bench import _ProcrastinateDatabase

        async with _ProcrastinateDatabase() as peer:
            procs = [await member("procrastinate", peer.dsn, str(n)) for n in _spread(size)]
            rate, connections = await _measure_idle(peer.dsn, procs, window, settle)
            row["procrastinate_xacts_per_s"] = round(rate, 2)
            row["procrastinate_xacts_per_worker_s"] = round(rate / size, 3)
            row["procrastinate_connections_per_worker"] = round((connections - 1) / size, 2)
    return row


async def _open_scopes(app: aioabort.App, ids: list[str]) -> tuple[list[Any], dict[str, Any]]:
    """Bodies that wait inside ``abortable(id)`` until cancelled; returns the tasks and an
    event per id set when its body is cancelled."""
    cancelled = {task_id: asyncio.Event() for task_id in ids}
    entered = {task_id: asyncio.Event() for task_id in ids}

    async def body(task_id: str) -> None:
        try:
            async with aioabort.abortable(task_id, app=app):
                entered[task_id].set()
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    cancelled[task_id].set()
                    raise
        except aioabort.TaskAborted:
            pass

    tasks = []
    for start in range(0, len(ids), 500):  # a pool has a bounded size: enter in batches
        batch = ids[start : start + 500]
        tasks += [asyncio.create_task(body(task_id)) for task_id in batch]
        for task_id in batch:
            await entered[task_id].wait()
    return tasks, cancelled


async def cpu_per_abort(url: str, scopes: int, aborts: int) -> dict[str, Any]:
    """This process holds the N scopes; another one (a fleet member) sends the aborts, so the
    CPU measured is the delivery's alone."""
    async with aioabort.App(url) as consumer:
        ids = [f"s-{i}" for i in range(scopes)]
        tasks, cancelled = await _open_scopes(consumer, ids)
        aborter = await member("aborter", url, "-")
        assert aborter.stdin is not None and aborter.stdout is not None
        try:
            await asyncio.sleep(1.0)  # the entries' own commits and notifications settle
            targets = ids[:: max(1, scopes // aborts)][:aborts]
            spent = 0.0
            for task_id in targets:
                cpu = time.process_time()
                aborter.stdin.write(f"{task_id}\n".encode())
                await aborter.stdin.drain()
                await asyncio.wait_for(cancelled[task_id].wait(), 30)
                spent += time.process_time() - cpu
                await aborter.stdout.readline()  # its reply, outside the measured time
        finally:
            await stop([aborter])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "open_scopes": scopes,
        "aborts": len(targets),
        "cpu_ms_per_abort": round(1000 * spent / len(targets), 3),
    }


async def _latencies(url: str, count: int) -> list[float]:
    async with aioabort.App(url) as consumer, aioabort.App(url) as producer:
        samples = []
        for i in range(count):
            task_id = f"lat-{uuid.uuid4().hex[:8]}-{i}"
            tasks, cancelled = await _open_scopes(consumer, [task_id])
            start = time.perf_counter()
            await producer.handle(task_id).abort("measured")
            await asyncio.wait_for(cancelled[task_id].wait(), 30)
            samples.append(time.perf_counter() - start)
            await asyncio.gather(*tasks, return_exceptions=True)
        return samples


async def listeners(listening: int, count: int) -> dict[str, Any]:
    async with database("bench_listeners") as dsn:
        url = f"{dsn}?aioabort_schema=fleet"
        alone = await _latencies(url, count)
        procs = [await member("apps", url, str(n)) for n in _spread(listening)]
        try:
            crowded = await _latencies(url, count)
        finally:
            await stop(procs)
    return {
        "listening_apps": listening,
        "alone": summary_ms(alone),
        "with_listeners": summary_ms(crowded),
    }


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def sqlite_processes(count: int, window: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="aioabort-fleet-") as tmp:
        url = f"sqlite:///{tmp}/fleet.db"
        async with aioabort.App(url) as app:
            procs = [await member("scope", url, f"p-{i}") for i in range(count)]
            try:
                await asyncio.sleep(1.0)
                before = [_cpu_seconds(p.pid) for p in procs]
                await asyncio.sleep(window)
                after = [_cpu_seconds(p.pid) for p in procs]
                samples = []
                for i, proc in enumerate(procs):
                    assert proc.stdout is not None
                    start = time.monotonic()
                    await app.handle(f"p-{i}").abort("measured")
                    line = await asyncio.wait_for(proc.stdout.readline(), 30)
                    samples.append(float(line.split()[1]) - start)
            finally:
                await stop(procs)
    idle = [100 * (b - a) / window for a, b in zip(before, after, strict=True)]
    return {
        "processes": count,
        "idle_cpu_percent_per_process": round(statistics.median(idle), 3),
        "idle_cpu_percent_all": round(sum(idle), 2),
        "abort_latency": summary_ms(samples),
    }


def _markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Fleet (DESIGN rule 13)",
        "",
        (
            f"Run {results['when']} ({results['mode']}). Targets from DESIGN.md §5; the "
            "first round's figures from its issue."
        ),
        "",
        "## Idle fleet on one PostgreSQL (server counters)",
        "",
        (
            "| Apps (processes) | aioabort xacts/s | per App | connections per App "
            "| procrastinate xacts/s | per worker | connections per worker |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    lines.extend(
        f"| {row['members']} ({row['processes']}) | {row['aioabort_xacts_per_s']} "
        f"| {row['aioabort_xacts_per_app_s']} | {row['aioabort_connections_per_app']} "
        f"| {row.get('procrastinate_xacts_per_s', '—')} "
        f"| {row.get('procrastinate_xacts_per_worker_s', '—')} "
        f"| {row.get('procrastinate_connections_per_worker', '—')} |"
        for row in results["idle_fleet"]
    )
    lines += [
        "",
        (
            f"Target: ≤ {TARGETS['idle_statements_per_app_s']} per App and ≤ "
            f"{TARGETS['connections_per_app']} connections; first round "
            f"{FIRST_ROUND['transactions_per_app_s']} per App."
        ),
        "",
        "## CPU per delivered abort, by open scopes (PostgreSQL)",
        "",
        "The consumer's CPU per abort (the delivery, the cancellation and the end's write);",
        "the first round measured its listener's share only, so compare the ratios.",
        "",
        "| open scopes | CPU ms per abort | vs the fewest | first round, vs 1,000 |",
        "|---|---|---|---|",
    ]
    first = FIRST_ROUND["cpu_ms_per_abort"]
    assert isinstance(first, dict)
    rows = {row["open_scopes"]: row["cpu_ms_per_abort"] for row in results["open_scopes"]}
    fewest = rows[min(rows)] or 1e-9
    lines.extend(
        f"| {n:,} | {cpu} | {cpu / fewest:.2f}x "
        f"| {f'{first[n] / first[1000]:.2f}x' if n in first else '—'} |"
        for n, cpu in rows.items()
    )
    if 1000 in rows and 20000 in rows:
        lines.append(
            f"\n20,000 vs 1,000: {rows[20000] / rows[1000]:.2f}x (target ≤ "
            f"{TARGETS['cpu_per_abort_ratio_20k_1k']}x; first round 11.7x)."
        )
    lat = results["listeners"]
    lines += [
        "",
        f"## Abort latency with {lat['listening_apps']} other Apps listening (PostgreSQL)",
        "",
        "| | p50 ms | p99 ms |",
        "|---|---|---|",
        f"| alone | {lat['alone']['p50_ms']} | {lat['alone']['p99_ms']} |",
        (
            f"| {lat['listening_apps']} listening | {lat['with_listeners']['p50_ms']} "
            f"| {lat['with_listeners']['p99_ms']} |"
        ),
        "",
        f"Target: p50 ≤ {TARGETS['listeners_p50_ms']} ms, p99 ≤ {TARGETS['listeners_p99_ms']} ms.",
        "",
    ]
    lines += [
        "## Idle waiters beside finishing tasks (the producer's CPU per task)",
        "",
        "| store | W | CPU ms per task | statements per task | vs W = 0 |",
        "|---|---|---|---|---|",
    ]
    for store, rows_of in results["waiters"].items():
        base = rows_of[0]["cpu_ms_per_task"] or 1e-9
        lines.extend(
            f"| {store} | {row['idle_waiters']:,} | {row['cpu_ms_per_task']} "
            f"| {row['statements_per_task']} | {row['cpu_ms_per_task'] / base:.2f}x |"
            for row in rows_of
        )
    lines += ["", "Target: ≤ 2x at W = 1,000 (first round: 46x PostgreSQL, 75x SQLite).", ""]
    sq = results["sqlite"]
    lines += [
        f"## SQLite: {sq['processes']} processes on one file, one scope each",
        "",
        (
            f"Idle CPU per process (median): {sq['idle_cpu_percent_per_process']} % of one "
            f"core (all together {sq['idle_cpu_percent_all']} %). Abort latency from another "
            f"process: p50 {sq['abort_latency']['p50_ms']} ms, p99 "
            f"{sq['abort_latency']['p99_ms']} ms."
        ),
        "",
    ]
    return "\n".join(lines)


def _plot(results: dict[str, Any]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (left, right, third) = plt.subplots(1, 3, figsize=(16, 4))
    fleet = results["idle_fleet"]
    sizes = [row["members"] for row in fleet]
    left.plot(sizes, [r["aioabort_xacts_per_s"] for r in fleet], "o-", label="aioabort")
    if all("procrastinate_xacts_per_s" in r for r in fleet):
        left.plot(
            sizes, [r["procrastinate_xacts_per_s"] for r in fleet], "s-", label="procrastinate"
        )
    per_app = FIRST_ROUND["transactions_per_app_s"]
    assert isinstance(per_app, float)
    left.plot(sizes, [per_app * n for n in sizes], "k--", label="aioabort, first round")
    left.set(xlabel="idle processes (P)", ylabel="server transactions/s", title="idle fleet")
    left.legend()
    scopes = results["open_scopes"]
    fewest = scopes[0]["cpu_ms_per_abort"] or 1e-9
    right.plot(
        [r["open_scopes"] for r in scopes],
        [r["cpu_ms_per_abort"] / fewest for r in scopes],
        "o-",
        label="this run",
    )
    first = FIRST_ROUND["cpu_ms_per_abort"]
    assert isinstance(first, dict)
    right.plot(list(first), [v / first[1000] for v in first.values()], "k--", label="first round")
    right.set(
        xscale="log",
        xlabel="open scopes (N)",
        ylabel="CPU per delivered abort, vs N = 1,000",
        title="aborts with N scopes open",
    )
    right.legend()
    first_waiters = FIRST_ROUND["waiter_cpu_ms_per_task"]
    assert isinstance(first_waiters, dict)
    for store, rows_of in results["waiters"].items():
        third.plot(
            [max(r["idle_waiters"], 1) for r in rows_of],
            [r["cpu_ms_per_task"] for r in rows_of],
            "o-",
            label=f"{store}, this run",
        )
        then = first_waiters[store]
        third.plot(
            [max(w, 1) for w in then], list(then.values()), "--", label=f"{store}, first round"
        )
    third.set(
        xscale="log",
        yscale="log",
        xlabel="idle waiters (W; 0 drawn at 1)",
        ylabel="producer CPU ms per finished task",
        title="waiters beside finishing tasks",
    )
    third.legend()
    fig.tight_layout()
    path = RESULTS / "fleet.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


async def run(mode: str, with_peer: bool) -> dict[str, Any]:
    settings = MODES[mode]
    results: dict[str, Any] = {"mode": mode, "when": time.strftime("%Y-%m-%d %H:%M UTC")}

    def log(text: str) -> None:
        print(f"[fleet] {text}", file=sys.stderr, flush=True)

    results["idle_fleet"] = []
    for size in settings["fleet"]:
        log(f"idle fleet of {size}")
        results["idle_fleet"].append(
            await idle_fleet(size, settings["window"], settings["settle"], with_peer)
        )
    results["open_scopes"] = []
    async with database("bench_scopes") as dsn:
        for count in settings["scopes"]:
            log(f"aborts with {count:,} open scopes")
            url = f"{dsn}?aioabort_schema=s_{count}"
            results["open_scopes"].append(await cpu_per_abort(url, count, settings["aborts"]))
    log(f"latency with {settings['listeners']} listening Apps")
    results["listeners"] = await listeners(settings["listeners"], settings["latency_n"])
    log(f"SQLite: {settings['sqlite_procs']} processes")
    results["sqlite"] = await sqlite_processes(settings["sqlite_procs"], settings["window"])
    results["waiters"] = await idle_waiters(settings["waiters"], settings["waiter_tasks"])
    return results


async def idle_waiters(counts: list[int], tasks: int) -> dict[str, list[dict[str, Any]]]:
    from . import waiters

    rows: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="aioabort-fleet-") as tmp:
        for store in ("sqlite", "postgres"):
            print(f"[fleet] idle waiters, {store}", file=sys.stderr, flush=True)

            def url_for(store: str = store) -> str:
                if store == "sqlite":
                    return f"sqlite:///{tmp}/w-{uuid.uuid4().hex[:8]}.db"
                return f"{_admin()}?aioabort_schema=w_{uuid.uuid4().hex[:8]}"

            rows[store] = await waiters.compare(url_for, tasks, counts)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.fleet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--smoke", action="store_true", help="seconds; no peer, no files")
    group.add_argument("--quick", action="store_true", help="a few minutes")
    parser.add_argument("--no-peers", action="store_true", help="aioabort only")
    args = parser.parse_args()
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    peer = not (args.smoke or args.no_peers)
    results = asyncio.run(run(mode, peer))
    report = _markdown(results)
    print(report)
    if mode != "smoke":
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "fleet.json").write_text(json.dumps(results, indent=2) + "\n")
        (RESULTS / "fleet.md").write_text(report + "\n")
        _plot(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
