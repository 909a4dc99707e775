"""Abort latency along a chain of calls between services, beside a single hop, in one run.

Three server processes on one store (``benchmarks/hops_app.py``): A (uvicorn) calls B
(aiohttp, ``trust_parent=True``), B calls C (uvicorn, ``trust_parent=True``), each call
carrying its scope (``aioabort.httpx.propagate``, ``aioabort.aiohttp.propagation()``). This
process aborts A's request once C's runs; the clock runs from the call of ``abort()`` until
each handler gets its ``CancelledError`` (each server prints ``perf_counter()``; CLOCK_MONOTONIC
is shared by the processes of a Linux host). The single hop is a request on A that calls
nobody, aborted the same way, alternating with the chain's samples. The store aborts the
whole family in one write, so B and C should stop within one hop's latency, not two or three.

    python -m benchmarks.hops --store sqlite --count 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from ._stats import summary_ms
from .servers import Server, aiohttp_web, uvicorn
from .soak import drop_schema

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
RESULTS = Path(__file__).parent / "results"
SERVICES = ("A", "B", "C")


async def _servers(stack: AsyncExitStack, url: str) -> dict[str, Server]:
    ready: dict[str, Any] = {"ready": "/health", "ready_status": 200, "stdout": True}
    c = await stack.enter_async_context(
        uvicorn("benchmarks.hops_app:c", url, **ready, env={"SERVICE": "C"})
    )
    b = await stack.enter_async_context(
        aiohttp_web("benchmarks.hops_app:b", url, **ready, env={"SERVICE": "B", "NEXT_URL": c.base})
    )
    a = await stack.enter_async_context(
        uvicorn("benchmarks.hops_app:a", url, **ready, env={"SERVICE": "A", "NEXT_URL": b.base})
    )
    return {"A": a, "B": b, "C": c}


async def _next(server: Server, kind: str) -> list[str]:
    """The server's next line of ``kind`` (``ENTERED``, ``CANCELLED``), the others skipped."""
    stdout = server.proc.stdout
    assert stdout is not None
    while True:
        try:
            line = (await asyncio.wait_for(stdout.readline(), 30)).decode().split()
        except TimeoutError:
            raise TimeoutError(f"no {kind} line from {server.base} within 30 s") from None
        if line[:1] == [kind]:
            return line


async def measure(url: str, count: int) -> dict[str, Any]:
    import httpx

    import aioabort

    single: list[float] = []
    chain: dict[str, list[float]] = {service: [] for service in SERVICES}
    async with AsyncExitStack() as stack:
        servers = await _servers(stack, url)
        client = await stack.enter_async_context(
            httpx.AsyncClient(base_url=servers["A"].base, timeout=60)
        )
        app = await stack.enter_async_context(aioabort.App(url))
        for i in range(count):
            for chained in (False, True):
                request_id = f"{'chain' if chained else 'single'}-{os.getpid()}-{i}"
                params = {"chain": "1"} if chained else {}
                waiting = asyncio.create_task(
                    client.get("/wait", params=params, headers={"x-request-id": request_id})
                )
                hops = SERVICES if chained else SERVICES[:1]
                last = request_id + ".next" * (len(hops) - 1)
                assert await _next(servers[hops[-1]], "ENTERED") == ["ENTERED", hops[-1], last]
                await asyncio.sleep(0.003 + (i % 7) * 0.001)  # land anywhere in a 10 ms step
                start = time.perf_counter()
                assert await app.handle(request_id).abort("benchmark") is True
                for depth, service in enumerate(hops):
                    try:
                        line = await _next(servers[service], "CANCELLED")
                    except TimeoutError:
                        records = [
                            await app.handle(last.rsplit(".next", d)[0]).record()
                            for d in range(len(hops))
                        ]
                        answer = (await waiting).text
                        raise TimeoutError(
                            f"{service} of {request_id}: {answer} {records}"
                        ) from None
                    assert line[:3] == ["CANCELLED", service, request_id + ".next" * depth], line
                    latency = float(line[3]) - start
                    (chain[service] if chained else single).append(latency)
                assert (await waiting).status_code == 499
        parent = await app.create(f"parent-{os.getpid()}")  # queued, never aborted
        cost = await _request_cost(servers["C"], parent=parent.id, count=count)
    result: dict[str, Any] = {
        "single_hop": summary_ms(single),
        "chain": {service: summary_ms(samples) for service, samples in chain.items()},
        "request": cost,
    }
    base = result["single_hop"]["p50_ms"] or 1e-9
    result["p50_ratio_to_single_hop"] = {
        service: round(result["chain"][service]["p50_ms"] / base, 2) for service in SERVICES
    }
    return result


async def _request_cost(server: Server, *, parent: str, count: int) -> dict[str, Any]:
    """What a trusted parent costs a request: ``GET /fast`` on C (``trust_parent=True``)
    without the headers, and naming a parent the store holds (one more read), alternating."""
    import httpx

    plain: list[float] = []
    parented: list[float] = []
    headers = {"aioabort-parent": parent, "aioabort-timeout": "30"}
    async with httpx.AsyncClient(base_url=server.base, timeout=30) as client:
        for _ in range(count):
            for samples, sent in ((plain, {}), (parented, headers)):
                start = time.perf_counter()
                assert (await client.get("/fast", headers=sent)).status_code == 200
                samples.append(time.perf_counter() - start)
    without, named = summary_ms(plain), summary_ms(parented)
    return {
        "without_headers": without,
        "naming_a_parent": named,
        "p50_ratio": round(named["p50_ms"] / (without["p50_ms"] or 1e-9), 2),
    }


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| store | single hop p50 / p99 | A p50 / p99 | B p50 / p99 | C p50 / p99 | "
        + "B, C p50 ÷ single hop |",
        "|---|---|---|---|---|---|",
    ]
    for store, row in results.items():
        cells = [f"{row['single_hop']['p50_ms']} / {row['single_hop']['p99_ms']}"]
        cells += [f"{row['chain'][s]['p50_ms']} / {row['chain'][s]['p99_ms']}" for s in SERVICES]
        ratio = row["p50_ratio_to_single_hop"]
        cells.append(f"{ratio['B']}, {ratio['C']}")
        lines.append(f"| {store} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| store | a request on C, p50: without the headers | naming a parent | ratio |",
        "|---|---|---|---|",
    ]
    for store, row in results.items():
        cost = row["request"]
        lines.append(
            f"| {store} | {cost['without_headers']['p50_ms']} | "
            f"{cost['naming_a_parent']['p50_ms']} | {cost['p50_ratio']} |"
        )
    return "\n".join(lines)


async def run(stores: list[str], count: int, tmp: str) -> dict[str, dict[str, Any]]:
    results = {}
    for store in stores:
        if store == "sqlite":
            url = f"sqlite:///{tmp}/hops-{uuid.uuid4().hex[:8]}.db"
        else:
            base = os.environ.get("AIOABORT_BENCH_POSTGRES_URL", DEFAULT_POSTGRES)
            url = f"{base}?aioabort_schema=hops_{uuid.uuid4().hex[:8]}"
        try:
            results[store] = await measure(url, count)
        finally:
            if store == "postgres":
                await drop_schema(url)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hops", description=__doc__)
    parser.add_argument(
        "--store", choices=["sqlite", "postgres", "both"], default="both", help="the store(s)"
    )
    parser.add_argument("--count", type=int, default=100, help="aborts per kind and store")
    parser.add_argument("--write", action="store_true", help="write results/hops.{json,md}")
    args = parser.parse_args()
    stores = ["sqlite", "postgres"] if args.store == "both" else [args.store]
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="aioabort-hops-") as tmp:
        results = asyncio.run(run(stores, args.count, tmp))
    print(json.dumps(results, indent=2))
    print(table(results))
    if args.write:
        (RESULTS / "hops.json").write_text(json.dumps(results, indent=2) + "\n")
        (RESULTS / "hops.md").write_text(
            "# Abort latency along a chain of calls\n\n"
            f"`python -m benchmarks.hops --count {args.count}`, ms, from `abort()` of A's "
            f"request to each handler's `CancelledError`; {time.strftime('%Y-%m-%d')}, "
            f"{os.cpu_count()} CPUs, load average {load:.1f} at the start.\n\n"
            + table(results)
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
