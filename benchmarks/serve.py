"""``/recommend`` under load: the highest rate each Ray Serve layout sustains at p99 <= 50 ms, beside the
same pipeline in one plain uvicorn process, in the same run.

    python -m benchmarks.serve [--items 10000] [--seconds 5] [--ingress colocated haproxy proxy] [--quick]
    python -m benchmarks.serve --rate 200          # one fixed rate instead of the search

Builds a 10k-item index over clustered synthetic 384-d embeddings (MiniLM's width), then for each server
(the plain FastAPI/uvicorn process running the very same classes, routes and request coalescing
in-process, and ``rayrec serve`` in each layout asked for: every stage a deployment behind HAProxy,
the stages colocated in the ingress behind HAProxy, every stage a deployment behind the default
proxy) starts it in its own process, warms it up, and sends an open-loop load from this process over
loopback: requests start on a fixed schedule (a rate for ``--seconds``), each with a random 10-item
history and k=10, whatever the answers' latency (so a slow server shows up as latency and errors, not as
a politely slower client). For each server the rate grows until the load is no longer sustained (p99
above 50 ms, an error, or throughput below 95% of the rate), then bisects: the table gives the highest
sustained rate, p50/p99 there, its ratio to the plain peer's, and the first rate that failed. Target:
200 requests/s or more on 2 cores. The load generator shares the
cores with the server; on a shared machine other work adds noise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET_P99_MS = 50.0
HISTORY = 10
K = 10
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_index(out: Path, items: int, dim: int, seed: int = 0) -> Path:
    """A flat index over a Gaussian mixture (50 topics) with zipf popularity: clustered like real embeddings."""
    from rayrec.features import l2_normalize
    from rayrec.index.faiss_index import IndexSpec, build_faiss_index
    from rayrec.index.item_index import write_index

    rng = np.random.default_rng(seed)
    centroids = l2_normalize(rng.normal(size=(50, dim)))  # [T, d]
    topics = rng.integers(0, 50, size=items)
    embeddings = l2_normalize(centroids[topics] + 0.08 * rng.normal(size=(items, dim)))  # [N, d]
    spec = IndexSpec(type="flat")
    write_index(
        str(out),
        [f"item-{i}" for i in range(items)],
        embeddings,
        rng.zipf(1.3, size=items).clip(max=100_000),
        build_faiss_index(embeddings, spec),
        spec,
        "synthetic",
    )
    return out


def run_plain_server(index: str, events: str, port: int) -> None:
    """The peer: the serving ingress with its stages colocated, and the event logger, in one uvicorn
    process without Ray (the same classes, routes and request coalescing as the Serve app)."""
    import uvicorn

    from serving.app import Recommender
    from serving.deployments import EventLogger
    from serving.local import LocalHandle, stages_user_config
    from serving.settings import AppConfig

    config = AppConfig(index=index, arms=["a=retrieval"], events=events, encoder=None, colocate=True)
    logger = EventLogger(events, config.remembered_requests, config.flush_rows, config.flush_seconds)
    service = Recommender(None, None, None, LocalHandle(logger), None, config)
    asyncio.run(service.reconfigure(stages_user_config(config)))
    # the very same HTTP app as the Serve ingress: guard (limits, admission, deadline), routes, validation
    uvicorn.run(service.asgi_app(), host="127.0.0.1", port=port, log_level="warning")
    logger.log.close()


def start_server(kind: str, index: Path, work: Path, port: int) -> subprocess.Popen:
    events = work / f"events-{kind}"
    env = {**os.environ, "RAYREC_PSEUDONYM_KEY": "bench" * 8, "RAY_ADDRESS": ""}
    if kind == "plain":
        command = [sys.executable, "-m", "benchmarks.serve", "--role", "plain", "--index", str(index)]
        command += ["--events", str(events), "--port", str(port)]
    else:
        command = [sys.executable, "-m", "rayrec", "serve", "--index", str(index), "--arm", "a=retrieval"]
        command += ["--events", str(events), "--port", str(port), "--encoder", "none"]
        command += ["--ingress", "haproxy", "--colocate"] if kind == "colocated" else ["--ingress", kind]
    log = open(work / f"{kind}.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise RuntimeError(f"server at {url} not ready after {timeout_s:.0f} s")


async def open_loop(url: str, rate: float, seconds: float, items: int, seed: int = 1) -> dict[str, float]:
    """Start ``rate * seconds`` requests on a fixed schedule; latency and errors of each.

    aiohttp rather than httpx: the load generator shares the 2 cores with the server, and httpx's async
    client spends several times more CPU per request, which starved the servers it was measuring.
    """
    import aiohttp

    rng = np.random.default_rng(seed)
    total = int(rate * seconds)
    bodies = [
        {"user_id": f"u{i}", "history": [f"item-{j}" for j in rng.integers(0, items, HISTORY)], "k": K}
        for i in range(total)
    ]
    latencies: list[float] = []

    async def one(session: aiohttp.ClientSession, body: dict, start_at: float) -> None:
        await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
        try:
            async with session.post(f"{url}/recommend", json=body) as response:
                answer = await response.json() if response.status == 200 else None
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return
        if answer is not None and len(answer["items"]) == K:
            # from the scheduled start: a stalled client or server counts, not only time on the wire
            latencies.append(time.perf_counter() - start_at)

    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
        t0 = time.perf_counter() + 0.1
        tasks = [asyncio.create_task(one(session, body, t0 + i / rate)) for i, body in enumerate(bodies)]
        await asyncio.wait(tasks, timeout=seconds + 15)
        for task in tasks:
            task.cancel()
        elapsed = time.perf_counter() - t0
    done = np.array(latencies) * 1000
    return {
        "sent": total,
        "ok": len(done),
        "errors": total - len(done),
        "throughput": len(done) / elapsed,
        "p50": float(np.percentile(done, 50)) if len(done) else float("nan"),
        "p99": float(np.percentile(done, 99)) if len(done) else float("nan"),
    }


def sustained(result: dict[str, float], rate: float) -> bool:
    """A load is sustained when every request was answered, p99 is within target and the server kept up."""
    return result["errors"] == 0 and result["p99"] <= TARGET_P99_MS and result["throughput"] >= 0.95 * rate


def search(url: str, args: argparse.Namespace) -> dict:
    """The highest open-loop rate the server sustains (:func:`sustained`): rates grow by ``--step`` from
    ``--min-rate`` until one fails (or ``--max-rate``), then ``--refine`` bisections between the last
    sustained rate and the first failed one. Each rate is measured for ``--seconds``."""
    tried: dict[float, dict[str, float]] = {}

    def at(rate: float) -> bool:
        rate = round(rate)
        if rate not in tried:
            tried[rate] = asyncio.run(open_loop(url, rate, args.seconds, args.items, seed=int(rate)))
            time.sleep(1.0)  # let queues drain between steps
            r = tried[rate]
            print(
                f"    {rate:5.0f} req/s: p50 {r['p50']:6.1f} ms, p99 {r['p99']:7.1f} ms, errors {r['errors']}",
                flush=True,
            )
        return sustained(tried[rate], rate)

    good, bad, rate = None, None, args.min_rate
    while rate <= args.max_rate:
        if not at(rate):
            bad = round(rate)
            break
        good, rate = round(rate), rate * args.step
    for _ in range(args.refine if good is not None and bad is not None else 0):
        middle = (good + bad) / 2
        if bad - good < 10:
            break
        if at(middle):
            good = round(middle)
        else:
            bad = round(middle)
    return {"best": good, "best_result": tried.get(good), "failed": bad, "failed_result": tried.get(bad)}


def measure(kind: str, index: Path, work: Path, args: argparse.Namespace) -> dict:
    """Start one server, warm it up, then measure it: a rate search, or one fixed ``--rate``."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(kind, index, work, port)
    try:
        wait_ready(url, proc)
        asyncio.run(open_loop(url, rate=50, seconds=2, items=args.items, seed=0))  # warm-up
        if args.rate is not None:
            result = asyncio.run(open_loop(url, args.rate, args.seconds, args.items))
            return {"fixed": result}
        print(f"  {NAMES[kind]}:", flush=True)
        return search(url, args)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()


NAMES = {
    "plain": "plain FastAPI/uvicorn, same pipeline",
    "haproxy": "Ray Serve, HAProxy ingress, every stage a deployment",
    "colocated": "Ray Serve, HAProxy, stages colocated in the ingress",
    "proxy": "Ray Serve, default proxy, every stage a deployment",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument(
        "--rate", type=float, default=None, help="measure this one rate instead of searching for the highest"
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the load at each rate")
    parser.add_argument("--min-rate", type=float, default=50.0, help="first rate of the search")
    parser.add_argument("--max-rate", type=float, default=2000.0, help="last rate the search tries")
    parser.add_argument("--step", type=float, default=1.5, help="factor between rates until one fails")
    parser.add_argument(
        "--refine", type=int, default=3, help="bisections between the last good and first bad"
    )
    parser.add_argument(
        "--ingress",
        nargs="+",
        default=["colocated", "haproxy", "proxy"],
        choices=["haproxy", "colocated", "proxy"],
        help="Serve layouts to measure: haproxy (every stage a deployment), colocated (--colocate), proxy",
    )
    parser.add_argument(
        "--quick", action="store_true", help="3 s per rate, colocated layout only, two bisections"
    )
    parser.add_argument("--role", choices=["plain"], help=argparse.SUPPRESS)
    parser.add_argument("--index", help=argparse.SUPPRESS)
    parser.add_argument("--events", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "plain":
        run_plain_server(args.index, args.events, args.port)
        return
    if args.quick:
        args.seconds, args.ingress, args.refine = 3.0, ["colocated"], 2
    with tempfile.TemporaryDirectory(prefix="rayrec-bench-serve-") as tmp:
        work = Path(tmp)
        index = build_index(work / "index", args.items, args.dim)
        results = {kind: measure(kind, index, work, args) for kind in ["plain", *args.ingress]}
    setting = (
        f"/recommend, {args.items:,} items, d={args.dim}, k={K}, history {HISTORY}, open loop, "
        f"{args.seconds:.0f} s per rate, load from a second process on loopback ({os.cpu_count()} cores "
        "shared with the load generator)"
    )
    if args.rate is not None:
        print(f"\n{setting}, {args.rate:.0f} req/s\n")
        print(
            "| server | sent | errors | throughput req/s | p50 ms | p99 ms | p99 / plain | p99 <= 50 ms, 0 errors |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        base = results["plain"]["fixed"]["p99"]
        for kind, measured in results.items():
            r = measured["fixed"]
            met = "yes" if sustained(r, args.rate) else "no"
            print(
                f"| {NAMES[kind]} | {r['sent']} | {r['errors']} | {r['throughput']:.0f} | {r['p50']:.1f} | "
                f"{r['p99']:.1f} | {r['p99'] / base:.1f}x | {met} |"
            )
        return
    print(
        f"\n{setting}: the highest rate each server sustains with p99 <= {TARGET_P99_MS:.0f} ms and no errors\n"
    )
    print(
        "| server | highest sustained req/s | p50 / p99 ms there | vs plain | first failed req/s (p99 ms, errors) |"
    )
    print("| --- | --- | --- | --- | --- |")
    plain = results["plain"]["best"] or 0
    for kind, r in results.items():
        best = r["best_result"]
        there = f"{best['p50']:.1f} / {best['p99']:.1f}" if best else "-"
        failed = r["failed_result"]
        beyond = (
            f"{r['failed']} ({failed['p99']:.0f}, {failed['errors']})"
            if failed
            else f"none up to {args.max_rate:.0f}"
        )
        ratio = f"{(r['best'] or 0) / plain:.2f}x" if plain else "-"
        print(f"| {NAMES[kind]} | {r['best'] or 'none'} | {there} | {ratio} | {beyond} |")


if __name__ == "__main__":
    main()
