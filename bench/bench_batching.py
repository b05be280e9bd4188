"""Cross-request batching: text-query throughput with N concurrent clients, batching off vs on, one run.

    python bench/bench_batching.py [--model ViT-B-32] [--clients 32] [--seconds 20]

Builds a small index with the model (random weights for a bare name), starts `xmodal serve` twice
(XMODAL_BATCHING=false, then true) on 127.0.0.1, and drives each from this process with `--clients`
concurrent httpx clients sending /v1/search/text for `--seconds` (bounded in count and time).
Prints one table and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.e2e.server import Server, run_xmodal  # noqa: E402 - the same helpers the e2e tests use

WORDS = ["red", "blue", "dog", "cat", "street", "kitchen", "beach", "mountain", "car", "child", "pizza", "train"]


async def drive(url: str, clients: int, seconds: float, max_requests: int = 100_000) -> dict:
    latencies, errors = [], 0
    stop_at = time.monotonic() + seconds

    async def client_loop(number: int) -> None:
        nonlocal errors
        rng = np.random.default_rng(number)
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            while time.monotonic() < stop_at and len(latencies) < max_requests:
                text = " ".join(rng.choice(WORDS, 3))
                started = time.perf_counter()
                try:
                    response = await client.post("/v1/search/text", json={"text": text, "k": 10})
                except httpx.TimeoutException:
                    errors += 1
                    continue
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1

    started = time.monotonic()
    await asyncio.gather(*(client_loop(i) for i in range(clients)))
    elapsed = time.monotonic() - started
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), "errors": errors, "qps": round(len(latencies) / elapsed, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--photos", type=Path, default=HERE.parent.parent / "shared/data/coco-mini/images")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "batching.json")
    args = parser.parse_args()

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        index = Path(tmp) / "index"
        built = run_xmodal("index", args.photos, "--out", index, "--model", args.model, "--no-progress", "--json")
        if built.returncode != 0:
            sys.exit(built.stderr)
        for batching in ("false", "true"):
            # All clients share one IP: the default per-client rate limit would cap the server, not the model.
            env = {"XMODAL_BATCHING": batching, "XMODAL_LOG_LEVEL": "warning", "XMODAL_RATE_LIMIT_RPS": "0"}
            with Server(index, Path(tmp) / f"server-{batching}.log", env=env) as server:
                server.wait_ready(timeout=300)
                asyncio.run(drive(server.url, args.clients, 3))  # warm-up
                results[batching] = asyncio.run(drive(server.url, args.clients, args.seconds))

    off, on = results["false"], results["true"]
    report = {
        "model": args.model, "clients": args.clients, "seconds": args.seconds, "query": "3 words, k=10",
        "index": f"Flat over {args.photos}", "hardware": f"{platform.machine()}, {os.cpu_count()} cores (server + load)",
        "batching_off": off, "batching_on": on, "qps_ratio": round(on["qps"] / off["qps"], 2),
    }
    print(f"text search over HTTP, {args.model} text tower, {args.clients} concurrent clients, {args.seconds:.0f}s each, "
          f"{report['hardware']}")
    print(f"{'batching':<10}{'QPS':>8}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for name, row in (("off", off), ("on", on)):
        print(f"{name:<10}{row['qps']:>8}{row['p50_ms']:>9}{row['p99_ms']:>9}{row['errors']:>8}")
    print(f"throughput ratio on/off: {report['qps_ratio']}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
