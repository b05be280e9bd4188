"""Cross-request batching: text-query throughput with N concurrent clients, batching off vs on, one run.

    python bench/bench_batching.py [--model ViT-B-32] [--clients 32] [--seconds 20]

Builds a small index with the model (random weights for a bare name), starts `xmodal serve` twice
(XMODAL_BATCHING=false, then true) on 127.0.0.1, and drives each with `--clients` concurrent clients
sending /v1/search/text for `--seconds` (bounded in count and time): httpx clients in this process
(`--load httpx`, the default), or wrk (`--load wrk`: `apt install wrk`; one wrk thread, `--clients`
connections, bench/load/search_text.lua), a C load generator that leaves more of the two cores to the
server. Prints one table and writes JSON.

It also times the model alone, in this process before the servers start: one text at a time against
batches of min(clients, --max-batch) texts. Their per-text ratio is the most batching can gain if
HTTP, queueing and the load generator cost nothing: the ceiling for the on/off ratio on this machine.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the xmodal command does, for the in-process timing too

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent

from common import closed_loop  # noqa: E402

from xmodal.app.testing import Server, run_xmodal  # noqa: E402 - the same helpers the e2e tests use


def random_query(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, 3))


def model_ceiling(model: str, batch: int, threads: int | None, int8_text: bool, repeats: int = 5) -> dict:
    """Per-text encode time at batch 1 and at `batch`, in process (median of `repeats` after a warm-up)."""
    import statistics

    from xmodal.models.encoders import Encoder

    encoder = Encoder.from_spec(model, "cpu", threads=threads, int8_text=int8_text)
    rng = np.random.default_rng(1_000)
    per_text = {}
    for size in (1, batch):
        batches = [[random_query(rng) for _ in range(size)] for _ in range(repeats + 1)]
        encoder.encode_texts(batches[0])
        seconds = []
        for texts in batches[1:] * (4 if size == 1 else 1):
            started = time.perf_counter()
            encoder.encode_texts(texts)
            seconds.append(time.perf_counter() - started)
        per_text[size] = statistics.median(seconds) / size
    return {
        "batch": batch,
        "ms_per_text_batch_1": round(per_text[1] * 1000, 2),
        "ms_per_text_batched": round(per_text[batch] * 1000, 2),
        "ceiling_ratio": round(per_text[1] / per_text[batch], 2),
    }


WORDS = ["red", "blue", "dog", "cat", "street", "kitchen", "beach", "mountain", "car", "child", "pizza", "train"]


async def drive(url: str, clients: int, seconds: float) -> dict:
    """Text searches of random 3-word queries (each client its own seeded sequence)."""
    rngs = [np.random.default_rng(number) for number in range(clients)]

    def send(client: httpx.AsyncClient, number: int, i: int):
        return client.post("/v1/search/text", json={"text": random_query(rngs[number]), "k": 10})

    return await closed_loop(url, clients, seconds, send)


def drive_wrk(url: str, clients: int, seconds: float) -> dict:
    """wrk -t1 -c{clients}: the same queries from one C thread; its Lua script prints one JSON line."""
    script = HERE / "load" / "search_text.lua"
    command = ["wrk", "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--timeout", "60s", "-s", str(script), url]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    ok = stats["requests"] - stats["non_2xx"]
    return {
        "requests": ok,
        "errors": stats["non_2xx"] + stats["socket_errors"],
        "qps": round(ok / stats["seconds"], 1),
        "p50_ms": stats["p50_ms"],
        "p99_ms": stats["p99_ms"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--photos", type=Path, default=HERE.parent.parent / "shared/data/coco-mini/images")
    parser.add_argument("--max-batch", type=int, default=64, help="XMODAL_BATCH_MAX_SIZE (the server's default)")
    parser.add_argument("--threads", type=int, default=None, help="XMODAL_THREADS, torch CPU threads (default: cores)")
    parser.add_argument("--load", choices=["httpx", "wrk"], default="httpx", help="load generator (see above)")
    parser.add_argument("--int8-text", action="store_true", help="XMODAL_TEXT_INT8: int8 text encoding, both servers")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "batching.json")
    args = parser.parse_args()

    ceiling = model_ceiling(args.model, min(args.clients, args.max_batch), args.threads, args.int8_text)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        index = Path(tmp) / "index"
        built = run_xmodal("index", args.photos, "--out", index, "--model", args.model, "--no-progress", "--json")
        if built.returncode != 0:
            sys.exit(built.stderr)
        for batching in ("false", "true"):
            # All clients share one IP: the default per-client rate limit would cap the server, not the model.
            env = {
                "XMODAL_BATCHING": batching,
                "XMODAL_LOG_LEVEL": "warning",
                "XMODAL_RATE_LIMIT_RPS": "0",
                "XMODAL_BATCH_MAX_SIZE": str(args.max_batch),
            }
            if args.threads is not None:
                env["XMODAL_THREADS"] = str(args.threads)
            if args.int8_text:
                env["XMODAL_TEXT_INT8"] = "true"
            with Server(index, Path(tmp) / f"server-{batching}.log", env=env) as server:
                server.wait_ready(timeout=300)
                if args.load == "wrk":
                    drive_wrk(server.url, args.clients, 3)  # warm-up
                    results[batching] = drive_wrk(server.url, args.clients, args.seconds)
                else:
                    asyncio.run(drive(server.url, args.clients, 3))  # warm-up
                    results[batching] = asyncio.run(drive(server.url, args.clients, args.seconds))

    off, on = results["false"], results["true"]
    report = {
        "model": args.model,
        "clients": args.clients,
        "seconds": args.seconds,
        "query": "3 words, k=10",
        "index": f"Flat over {args.photos}",
        "hardware": f"{platform.machine()}, {os.cpu_count()} cores (server + load)",
        "load_generator": args.load,
        "threads": args.threads or "cores",
        "text_weights": "int8" if args.int8_text else "fp32",
        "load_average_1m": round(os.getloadavg()[0], 2),
        "batching_off": off,
        "batching_on": on,
        "qps_ratio": round(on["qps"] / off["qps"], 2),
        "model_alone": ceiling,
    }
    print(
        f"text search over HTTP, {args.model} text tower ({report['text_weights']}), {args.clients} concurrent {args.load} clients, {args.seconds:.0f}s each, "
        f"{report['hardware']}"
    )
    print(f"{'batching':<10}{'QPS':>8}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for name, row in (("off", off), ("on", on)):
        print(f"{name:<10}{row['qps']:>8}{row['p50_ms']:>9}{row['p99_ms']:>9}{row['errors']:>8}")
    print(
        f"throughput ratio on/off: {report['qps_ratio']}x; the model alone (in process, no HTTP): "
        f"{ceiling['ms_per_text_batch_1']} ms a text at batch 1, {ceiling['ms_per_text_batched']} "
        f"ms at batch {ceiling['batch']}: a ceiling of {ceiling['ceiling_ratio']}x"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
