"""A notifier beside PostgreSQL (Redis, NATS) against PostgreSQL NOTIFY, in one run.

``python -m benchmarks.notify [--quick] [--listeners N] [--storm N]`` starts its own
``redis-server`` and ``nats-server`` on free loopback ports and measures, on the PostgreSQL of
``AIOABORT_BENCH_POSTGRES_URL`` (default: the local server):

* abort latency, another process (``abort()`` to the body's ``CancelledError``), through NOTIFY,
  Redis and NATS, each beside its floor measured in the same run, sample by sample: a bare
  asyncpg ``UPDATE`` + ``pg_notify`` heard by a listening connection in another process, a bare
  Redis ``PUBLISH`` and a bare NATS publish heard by a subscriber in another process;
* 16 writer processes starting and ending tasks on one PostgreSQL: tasks/s with NOTIFY and
  with each notifier;
* the summed CPU of the listening processes that do not own the task, per abort: addressed
  (a notifier) against broadcast (NOTIFY);
* with ``--storm N``: N aborts while the notifier is killed and restarted: how many were lost,
  and how many arrived later than the poll interval + 1 s.

Results: ``benchmarks/results/notify.json`` and ``notify.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg

import aioabort

from ._stats import summary_ms
from .servers import free_port

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
KINDS = ("notify", "redis", "nats")


class Servers:
    """redis-server and nats-server of this run's own; kill/start for the storm."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.ports = {"redis": free_port(), "nats": free_port()}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def url(self, kind: str) -> str:
        return f"{kind}://127.0.0.1:{self.ports[kind]}"

    def start(self, kind: str) -> None:
        port = str(self.ports[kind])
        if kind == "redis":
            command = [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", port]
            command += ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            command += ["--dir", self.workdir]
        else:
            command = [shutil.which("nats-server") or "/usr/sbin/nats-server", "-a", "127.0.0.1"]
            command += ["-p", port]
        self.procs[kind] = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.ports[kind]), timeout=1).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"{kind} did not start")

    def kill(self, kind: str) -> None:
        proc = self.procs.pop(kind, None)
        if proc is not None:
            proc.kill()
            proc.wait()


@asynccontextmanager
async def member(
    *args: str, env: dict[str, str] | None = None, ready_within: float = 120
) -> AsyncIterator[Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.notify_member",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**(env or os.environ), "PYTHONPATH": str(REPO)},
        limit=2**20,
    )
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), ready_within)  # type: ignore[union-attr]
        assert line.strip() == b"READY", line
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def notifier_env(notifier: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "AIOABORT_NOTIFIER"}
    if notifier is not None:
        env["AIOABORT_NOTIFIER"] = notifier
    return env


async def _stamp(proc: Any, word: str) -> list[str]:
    line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().split()
    assert line and line[0] == word, line
    return list(line)


# -- abort latency beside its floor -----------------------------------------------------------


async def _floor_once(
    kind: str, senders: tuple[Any, Any], proc: Any, channel: str, *, commit: bool
) -> float:
    """One message heard by the floor's subscriber: NOTIFY with its UPDATE; a bare publish;
    or (``commit``) the same UPDATE committed first, then the publish."""
    conn, client = senders
    start = time.perf_counter()
    if kind == "notify":
        await conn.execute(
            "WITH u AS (UPDATE bench_floor SET n = n + 1 WHERE id = 1 RETURNING n) "
            f"SELECT pg_notify('{channel}', 'x') FROM u"
        )
    else:
        if commit:
            await conn.execute("UPDATE bench_floor SET n = n + 1 WHERE id = 1")
        await client.publish(channel, b"x")
    return float((await _stamp(proc, "GOT"))[1]) - start


@asynccontextmanager
async def _floor_senders(kind: str, dsn: str, url: str | None) -> AsyncIterator[tuple[Any, Any]]:
    client: Any = None
    conn = await asyncpg.connect(dsn)
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS bench_floor (id int PRIMARY KEY, n int);"
        "INSERT INTO bench_floor VALUES (1, 0) ON CONFLICT DO NOTHING"
    )
    try:
        if kind == "redis":
            import redis.asyncio as aioredis

            client = aioredis.Redis.from_url(str(url))
        elif kind == "nats":
            import nats

            client = await nats.connect(str(url))
        yield conn, client
    finally:
        await conn.close()
        if client is not None:
            await (client.aclose() if kind == "redis" else client.close())


async def latency(kind: str, store: str, dsn: str, notifier: str | None, count: int) -> Any:
    """Abort latency through ``kind``, alternating sample by sample with its floors."""
    channel = f"bench_{uuid.uuid4().hex[:8]}"
    floor_url = dsn if kind == "notify" else notifier
    assert floor_url is not None
    prefix = f"lat-{uuid.uuid4().hex[:8]}"
    env = notifier_env(notifier)
    ours: list[float] = []
    floors: list[float] = []
    committed: list[float] = []
    async with (
        member(f"floor-{'pg' if kind == 'notify' else kind}", floor_url, channel) as floor,
        member("listen", store, prefix, str(count), env=env) as listener,
        _floor_senders(kind, dsn, notifier) as senders,
        aioabort.App(store, notifier=notifier) as app,
    ):
        for i in range(count):
            await asyncio.sleep(0.004 + (i % 7) * 0.001)
            floors.append(await _floor_once(kind, senders, floor, channel, commit=False))
            if kind != "notify":
                await asyncio.sleep(0.004 + (i % 3) * 0.001)
                committed.append(await _floor_once(kind, senders, floor, channel, commit=True))
            await asyncio.sleep(0.004 + (i % 5) * 0.001)
            start = time.perf_counter()
            await app.handle(f"{prefix}-{i}").abort("benchmark")
            ours.append(float((await _stamp(listener, "CANCELLED"))[2]) - start)
    mine, low = summary_ms(ours), summary_ms(floors)
    result = {
        "abort_to_cancel": mine,
        "floor": low,
        "ratio_p50": round(mine["p50_ms"] / low["p50_ms"], 2),
        "ratio_p99": round(mine["p99_ms"] / low["p99_ms"], 2),
    }
    if committed:
        with_commit = summary_ms(committed)
        result["floor_with_commit"] = with_commit
        result["ratio_p50_with_commit"] = round(mine["p50_ms"] / with_commit["p50_ms"], 2)
    return result


# -- writers ----------------------------------------------------------------------------------


async def writers(store: str, notifier: str | None, count: int, seconds: float) -> Any:
    env = notifier_env(notifier)
    procs = []
    try:
        procs.extend(
            [await _spawn_ready(("write", store, str(seconds)), env) for _ in range(count)]
        )
        for proc in procs:
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
        total = 0
        for proc in procs:
            total += int((await asyncio.wait_for(proc.stdout.readline(), seconds + 60)).split()[1])
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
    return {"writers": count, "seconds": seconds, "tasks_per_s": round(total / seconds, 1)}


async def _spawn_ready(args: Sequence[str], env: dict[str, str]) -> Any:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.notify_member",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**env, "PYTHONPATH": str(REPO)},
    )
    line = await asyncio.wait_for(proc.stdout.readline(), 120)  # type: ignore[union-attr]
    assert line.strip() == b"READY", line
    return proc


# -- CPU of listeners -------------------------------------------------------------------------


def _cpu(pids: Sequence[int]) -> float:
    """Summed user + system CPU seconds of ``pids`` (from /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks


async def listeners_cpu(store: str, notifier: str | None, listeners: int, aborts: int) -> Any:
    """CPU of the ``listeners - 1`` processes that own nothing, per abort of the owner's."""
    env = notifier_env(notifier)
    prefix = f"cpu-{uuid.uuid4().hex[:8]}"
    others = [
        await _spawn_ready(("listen", store, f"{prefix}-x{n}", "0"), env)
        for n in range(listeners - 1)
    ]
    try:
        async with (
            member("listen", store, prefix, str(aborts), env=env) as owner,
            aioabort.App(store, notifier=notifier) as app,
        ):
            pids = [proc.pid for proc in others]
            await asyncio.sleep(1.0)  # let every process settle
            idle_start, idle_cpu = time.perf_counter(), _cpu(pids)
            await asyncio.sleep(6.0)  # longer than the poll interval: its polls are counted
            idle_rate = (_cpu(pids) - idle_cpu) / (time.perf_counter() - idle_start)
            start, cpu = time.perf_counter(), _cpu(pids)
            for i in range(aborts):
                await app.handle(f"{prefix}-{i}").abort("benchmark")
                await _stamp(owner, "CANCELLED")
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.5)  # the last notices heard
            took = time.perf_counter() - start
            spent = _cpu(pids) - cpu - idle_rate * took
    finally:
        for proc in others:
            proc.kill()
            await proc.wait()
    return {
        "listeners": listeners,
        "aborts": aborts,
        "non_owner_cpu_ms_per_abort": round(max(spent, 0.0) / aborts * 1000, 3),
        "idle_cpu_ms_per_s": round(idle_rate * 1000, 3),
    }


# -- the storm --------------------------------------------------------------------------------


async def storm(store: str, servers: Servers, kind: str, count: int) -> Any:
    """``count`` aborts; the notifier is killed at a third and started again at two thirds."""
    notifier = servers.url(kind)
    prefix = f"storm-{uuid.uuid4().hex[:8]}"
    poll = aioabort.App(store).poll_interval or 5.0
    asked: dict[int, float] = {}
    got: dict[int, float] = {}
    async with (
        member(  # the bodies sleep: 10,000 bodies waking every 10 ms would be the benchmark
            "listen",
            store,
            prefix,
            str(count),
            "3600",
            env=notifier_env(notifier),
            ready_within=900,
        ) as owner,
        aioabort.App(store, notifier=notifier) as app,
    ):

        async def read() -> None:
            while len(got) < count:
                words = await _stamp(owner, "CANCELLED")
                got[int(words[1])] = float(words[2])

        reader = asyncio.create_task(read())
        for i in range(count):
            if i == count // 3:
                servers.kill(kind)
            if i == 2 * count // 3:
                servers.start(kind)
            asked[i] = time.perf_counter()
            await app.handle(f"{prefix}-{i}").abort("storm")
        try:
            await asyncio.wait_for(reader, poll + 120)
        except TimeoutError:
            reader.cancel()
    late = [i for i in got if got[i] - asked[i] > poll + 1.0]
    delays = [got[i] - asked[i] for i in got]
    return {
        "notifier": kind,
        "aborts": count,
        "poll_interval_s": poll,
        "lost": count - len(got),
        "later_than_poll_plus_1s": len(late),
        "delay": summary_ms(delays),
    }


# -- the run ----------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    base = os.environ.get("AIOABORT_BENCH_POSTGRES_URL", DEFAULT_POSTGRES)
    dsn = base.split("?", 1)[0]
    schemas: list[str] = []

    def store() -> str:
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        schemas.append(schema)
        return f"{base}{'&' if '?' in base else '?'}aioabort_schema={schema}"

    results: dict[str, Any] = {"latency": {}, "writers": {}, "cpu": {}, "storm": None}
    with tempfile.TemporaryDirectory(prefix="aioabort-notify-") as workdir:
        servers = Servers(workdir)
        try:
            for kind in ("redis", "nats"):
                servers.start(kind)
            for kind in KINDS:
                notifier = None if kind == "notify" else servers.url(kind)
                print(f"latency through {kind}", file=sys.stderr, flush=True)
                results["latency"][kind] = await latency(kind, store(), dsn, notifier, args.count)
                _save(results)
            for kind in KINDS:
                notifier = None if kind == "notify" else servers.url(kind)
                print(f"16 writers with {kind}", file=sys.stderr, flush=True)
                results["writers"][kind] = await writers(store(), notifier, 16, args.seconds)
                _save(results)
            for kind in ("notify", "nats"):
                notifier = None if kind == "notify" else servers.url(kind)
                print(f"{args.listeners} listeners with {kind}", file=sys.stderr, flush=True)
                results["cpu"][kind] = await listeners_cpu(
                    store(), notifier, args.listeners, args.aborts
                )
                _save(results)
            if args.storm:
                print(f"storm of {args.storm} aborts", file=sys.stderr, flush=True)
                results["storm"] = await storm(store(), servers, "redis", args.storm)
        finally:
            for kind in ("redis", "nats"):
                servers.kill(kind)
            conn = await asyncpg.connect(dsn)
            try:
                for schema in schemas:
                    await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
                await conn.execute("DROP TABLE IF EXISTS bench_floor")
            finally:
                await conn.close()
    return results


def _save(results: dict[str, Any]) -> None:
    """What is measured so far (a later part that fails leaves the earlier ones)."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "notify.json").write_text(json.dumps(results, indent=2) + "\n")


def markdown(results: dict[str, Any], args: argparse.Namespace) -> str:
    lat = results["latency"]
    notify = lat["notify"]["abort_to_cancel"]
    lines = [
        "# A notifier beside PostgreSQL vs NOTIFY (one run)",
        "",
        f"Load average at the end: {os.getloadavg()[0]:.2f} (2 shared cores).",
        "",
        "## Abort latency, another process (ms)",
        "",
        (
            "Floor: NOTIFY's is a bare asyncpg UPDATE + pg_notify in one statement; Redis's and "
            "NATS's a bare publish. 'commit, then publish' is the same UPDATE committed first, then "
            "the publish: the least a notifier path can take. Each heard by a subscriber in another "
            "process, sample by sample with ours."
        ),
        "",
        (
            "| path | p50 | p99 | floor p50 / p99 | ours / floor p50, p99 | commit, then publish p50 "
            "| ours / it p50 | vs NOTIFY p50, p99 |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind in KINDS:
        row = lat[kind]
        ours, low = row["abort_to_cancel"], row["floor"]
        commit = row.get("floor_with_commit", {}).get("p50_ms", "-")
        commit_ratio = row.get("ratio_p50_with_commit", "-")
        lines.append(
            f"| {kind} | {ours['p50_ms']} | {ours['p99_ms']} | {low['p50_ms']} / "
            f"{low['p99_ms']} | {row['ratio_p50']}x, {row['ratio_p99']}x | {commit} | "
            f"{commit_ratio}x | "
            f"{ours['p50_ms'] / notify['p50_ms']:.2f}x, {ours['p99_ms'] / notify['p99_ms']:.2f}x |"
        )
    base = results["writers"]["notify"]["tasks_per_s"]
    lines += [
        "",
        f"## 16 writers starting and ending tasks for {args.seconds:g} s (tasks/s)",
        "",
        "| push | tasks/s | vs NOTIFY |",
        "|---|---|---|",
    ]
    for kind in KINDS:
        rate = results["writers"][kind]["tasks_per_s"]
        lines.append(f"| {kind} | {rate} | {rate / base:.2f}x |")
    cpu = results["cpu"]
    broadcast = cpu["notify"]["non_owner_cpu_ms_per_abort"]
    addressed = cpu["nats"]["non_owner_cpu_ms_per_abort"]
    lines += [
        "",
        f"## {args.listeners} listening processes: CPU of the non-owners per abort (ms)",
        "",
        "| push | CPU per abort | idle CPU (ms/s) |",
        "|---|---|---|",
        f"| broadcast (NOTIFY) | {broadcast} | {cpu['notify']['idle_cpu_ms_per_s']} |",
        f"| addressed (NATS) | {addressed} | {cpu['nats']['idle_cpu_ms_per_s']} |",
        "",
        f"Addressed / broadcast: {addressed / broadcast:.3f}x" if broadcast else "",
    ]
    storm_result = results["storm"]
    if storm_result:
        lines += [
            "",
            (
                f"## Storm: {storm_result['aborts']} aborts, {storm_result['notifier']} killed "
                "at a third, back at two thirds"
            ),
            "",
            (
                f"Lost: {storm_result['lost']}; later than the poll interval "
                f"({storm_result['poll_interval_s']} s) + 1 s: "
                f"{storm_result['later_than_poll_plus_1s']}; delay p50 "
                f"{storm_result['delay']['p50_ms']} ms, max {storm_result['delay']['max_ms']} ms."
            ),
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.notify")
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    parser.add_argument(
        "--listeners",
        type=int,
        default=40,
        help="listening processes (each holds 2 PostgreSQL connections: mind max_connections)",
    )
    parser.add_argument("--storm", type=int, default=0, help="aborts in the storm (0: none)")
    args = parser.parse_args()
    args.count = 60 if args.quick else 200
    args.seconds = 5.0 if args.quick else 10.0
    args.aborts = 20 if args.quick else 50
    results = asyncio.run(run(args))
    _save(results)
    text = markdown(results, args)
    (RESULTS / "notify.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
