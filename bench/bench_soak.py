"""Soak: minutes of mixed traffic at half the measured maximum rate, with a hot swap every minute (issue #13).

    OMP_WAIT_POLICY=PASSIVE python bench/bench_soak.py [--minutes 10] [--max-seconds 20] [--clients 4]
        [--images 24] [--swap-every 60] [--photos ../shared/data/coco-mini/images] [--out bench/results/soak.json]

Setup: the tiny CoCa (`xmodal-tiny-coca`, seeded random weights: captions and VQA run the real decoder) saved
as a local-dir; --images coco-mini JPEGs copied into a scratch folder and indexed with `build_index`; the
server is `xmodal serve` from this checkout on 127.0.0.1 (the e2e tests' `Server`), XMODAL_RATE_LIMIT_RPS=0,
XMODAL_LOG_LEVEL=warning, XMODAL_RELOAD_INTERVAL_S=1.
Traffic: each request draws a route from MIX (text and image search, text and image embeddings, rank,
caption, VQA, item rows and files, /metrics). First --clients closed-loop clients run --max-seconds to
measure the maximum rate; then an open loop sends at half of it for --minutes (requests start on schedule;
at most 64 in flight, a later start counts as a stall). Every --swap-every seconds one more image is copied
in and a new version is built and published in this process; the server hot-swaps to it.
Reported: errors by status (any status but 200; 429s are counted apart as planned), p50/p99 per route per
minute, the server's RSS (VmRSS of its process) at the soak's start and end, swaps seen. Goal: no errors,
RSS growth under 5%, no drift (last minute's p50 within 1.5x of the first's). One table on stdout; JSON to
--out (bench/results/ is ignored by git).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: spinning threads on a shared box

import argparse  # noqa: E402
import asyncio  # noqa: E402
import base64  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from xmodal.app.testing import Server  # noqa: E402 - the e2e tests' server runner

TEXTS = ["a dog on a couch", "a red bus", "two people skiing", "a plate of food", "a cat on a bed", "a kitchen"]
# route name -> weight; every route a client of the service would use.
MIX = {
    "search_text": 4,
    "search_image": 2,
    "embed_text": 2,
    "embed_image": 1,
    "rank": 1,
    "caption": 1,
    "vqa": 1,
    "item": 2,
    "item_image": 1,
    "metrics": 0.5,
}
MAX_IN_FLIGHT = 64


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--max-seconds", type=float, default=20, help="how long to measure the maximum rate")
    parser.add_argument("--clients", type=int, default=4, help="closed-loop clients for the maximum")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--swap-every", type=float, default=60)
    parser.add_argument("--photos", type=Path, default=ROOT.parent / "shared" / "data" / "coco-mini" / "images")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


class Traffic:
    """Builds one request of a route; images go as JSON image_b64."""

    def __init__(self, images: list[bytes], items: int, seed: int):
        self.images = [base64.b64encode(data).decode() for data in images]
        self.items, self.random = items, random.Random(seed)
        self.routes, self.weights = list(MIX), list(MIX.values())

    def pick(self) -> str:
        return self.random.choices(self.routes, self.weights)[0]

    async def send(self, http: httpx.AsyncClient, route: str) -> int:
        r, image = self.random, self.random.choice(self.images)
        text = r.choice(TEXTS)
        if route == "search_text":
            response = await http.post("/v1/search/text", json={"text": text, "k": 10})
        elif route == "search_image":
            response = await http.post("/v1/search/image", json={"image_b64": image, "k": 10})
        elif route == "embed_text":
            response = await http.post("/v1/embed/text", json={"texts": r.sample(TEXTS, 3)})
        elif route == "embed_image":
            response = await http.post("/v1/embed/image", json={"image_b64": image})
        elif route == "rank":
            response = await http.post("/v1/rank", json={"text": text, "images": r.sample(range(self.items), 5)})
        elif route == "caption":
            response = await http.post("/v1/caption", json={"image_b64": image, "max_tokens": 8})
        elif route == "vqa":
            body = {"image_b64": image, "question": "what is it?", "answers": ["a dog", "a bus", "food"]}
            response = await http.post("/v1/vqa", json=body)
        elif route == "item":
            response = await http.get(f"/v1/items/{r.randrange(self.items)}")
        elif route == "item_image":
            response = await http.get(f"/v1/items/{r.randrange(self.items)}/image")
        else:
            response = await http.get("/metrics")
        return response.status_code


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


async def measure_max(url: str, traffic: Traffic, clients: int, seconds: float) -> float:
    """Completed requests per second with `clients` closed-loop clients."""
    done = 0
    deadline = time.monotonic() + seconds

    async def client():
        nonlocal done
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            while time.monotonic() < deadline:
                await traffic.send(http, traffic.pick())
                done += 1

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    return done / (time.monotonic() - started)


async def soak(url: str, traffic: Traffic, rate: float, seconds: float, swap, swap_every: float, pid: int) -> dict:
    """Open loop at `rate`/s for `seconds`; `swap()` (blocking) every `swap_every` s in a thread; the server's
    (process `pid`) RSS sampled every minute, to tell a plateau from steady growth."""
    samples: list[tuple[float, str, int, float]] = []  # (start offset s, route, status, latency ms)
    stalls, swaps, rss = 0, [], []
    in_flight: set[asyncio.Task] = set()
    started = time.monotonic()

    async def one(http, route, at):
        t0 = time.monotonic()
        try:
            status = await traffic.send(http, route)
        except httpx.HTTPError as exc:  # a transport failure is an error, recorded as status 0
            print(f"transport error on {route}: {type(exc).__name__}: {exc}", file=sys.stderr)
            status = 0
        samples.append((at, route, status, (time.monotonic() - t0) * 1000))

    async def swapper():
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(swap_every)
            t0 = time.monotonic()
            version = await loop.run_in_executor(None, swap)
            swaps.append(
                {"at_s": round(t0 - started, 1), "version": version, "build_s": round(time.monotonic() - t0, 2)}
            )

    async def sampler():
        while True:
            rss.append({"at_s": round(time.monotonic() - started, 1), "bytes": rss_bytes(pid)})
            await asyncio.sleep(60)

    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        swapping, sampling = asyncio.create_task(swapper()), asyncio.create_task(sampler())
        n = 0
        while (now := time.monotonic() - started) < seconds:
            due = n / rate
            if due > now:
                await asyncio.sleep(due - now)
            if len(in_flight) >= MAX_IN_FLIGHT:
                stalls += 1
                await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            task = asyncio.create_task(one(http, traffic.pick(), due))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            n += 1
        swapping.cancel()
        sampling.cancel()
        if in_flight:
            await asyncio.wait(in_flight)
    return {
        "samples": samples,
        "stalls": stalls,
        "swaps": swaps,
        "rss": rss,
        "sent": n,
        "seconds": time.monotonic() - started,
    }


def summarize(samples, minutes: int) -> dict:
    per = defaultdict(list)
    for at, route, status, ms in samples:
        if status == 200:
            per[(route, min(int(at // 60), minutes - 1))].append(ms)
    table = {}
    for route in MIX:
        table[route] = [
            {
                "minute": m + 1,
                "n": len(per[(route, m)]),
                "p50_ms": round(float(np.percentile(per[(route, m)], 50)), 1) if per[(route, m)] else None,
                "p99_ms": round(float(np.percentile(per[(route, m)], 99)), 1) if per[(route, m)] else None,
            }
            for m in range(minutes)
        ]
    return table


def main() -> None:
    args = _args()
    import torch

    torch.set_num_threads(1)  # the bench's own model (for publishing versions) stays off the server's cores
    from tests.conftest import TINY_COCA, _save_local_dir
    from xmodal.indexer.build import BuildConfig, build_index
    from xmodal.models.encoders import Encoder

    work = Path(tempfile.mkdtemp(prefix="xmodal-soak-"))
    try:
        model_dir = _save_local_dir(TINY_COCA, work / "model")
        encoder = Encoder.from_spec(f"local-dir:{model_dir}", "cpu")
        pool = sorted(args.photos.glob("*.jpg"))
        if len(pool) < args.images + 2:
            raise SystemExit(f"{args.photos} has {len(pool)} JPEGs; need more than --images {args.images}")
        photos, out = work / "photos", work / "index"
        photos.mkdir()
        for source in pool[: args.images]:
            shutil.copy(source, photos / source.name)
        added = iter(pool[args.images :])

        def publish() -> str:
            source = next(added, None)
            if source is not None:
                shutil.copy(source, photos / source.name)
            return build_index(BuildConfig(photos, out, workers=0, progress=False), encoder).version.name

        publish()
        minutes = max(1, int(np.ceil(args.minutes)))
        env = {"XMODAL_RATE_LIMIT_RPS": "0", "XMODAL_LOG_LEVEL": "warning", "XMODAL_RELOAD_INTERVAL_S": "1"}
        with Server(out, work / "server.log", env=env) as server:
            server.wait_ready()
            traffic = Traffic([p.read_bytes() for p in sorted(photos.glob("*.jpg"))[:8]], args.images, args.seed)
            max_rps = asyncio.run(measure_max(server.url, traffic, args.clients, args.max_seconds))
            rate = max_rps / 2
            print(f"max {max_rps:.1f} req/s with {args.clients} clients; soak at {rate:.1f} req/s", file=sys.stderr)
            rss_start = rss_bytes(server.process.pid)
            run = asyncio.run(
                soak(server.url, traffic, rate, args.minutes * 60, publish, args.swap_every, server.process.pid)
            )
            rss_end = rss_bytes(server.process.pid)
            log_tail = server.log()[-4000:]
        statuses = Counter(status for _, _, status, _ in run["samples"])
        errors = {str(s): c for s, c in sorted(statuses.items()) if s not in (200, 429)}
        table = summarize(run["samples"], minutes)
        first = [row[0]["p50_ms"] for row in table.values() if row[0]["p50_ms"]]
        last = [row[-1]["p50_ms"] for row in table.values() if row[-1]["p50_ms"]]
        drift = float(np.median([b / a for a, b in zip(first, last)])) if first and len(first) == len(last) else None
        result = {
            "minutes": args.minutes,
            "max_rps": round(max_rps, 2),
            "rate_rps": round(rate, 2),
            "sent": run["sent"],
            "stalls": run["stalls"],
            "statuses": {str(s): c for s, c in sorted(statuses.items())},
            "errors": errors,
            "planned_429": statuses.get(429, 0),
            "rss_start_bytes": rss_start,
            "rss_end_bytes": rss_end,
            "rss_growth": round(rss_end / rss_start - 1, 4),
            "median_p50_ratio_last_to_first_minute": round(drift, 3) if drift else None,
            "swaps": run["swaps"],
            "rss_per_minute": run["rss"],
            "routes": table,
            "server_log_tail": log_tail,
            "machine": f"{os.cpu_count()} CPUs, torch threads in the bench process 1",
        }
        _print(result, minutes)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _print(result: dict, minutes: int) -> None:
    head = "route          " + "".join(f"  min{m + 1} p50/p99 ms (n)".rjust(26) for m in range(minutes))
    print(head)
    for route, rows in result["routes"].items():
        cells = "".join((f"{r['p50_ms']:.0f}/{r['p99_ms']:.0f} ({r['n']})" if r["n"] else "-").rjust(26) for r in rows)
        print(f"{route:<15}{cells}")
    growth = result["rss_growth"] * 100
    per_minute = ", ".join(f"{r['bytes'] / 2**20:.0f}" for r in result["rss_per_minute"])
    print(
        f"max {result['max_rps']} req/s, soak {result['rate_rps']} req/s, {result['sent']} sent, "
        f"{result['stalls']} stalls; errors {result['errors'] or 'none'}, planned 429s {result['planned_429']}; "
        f"RSS {result['rss_start_bytes'] / 2**20:.0f} -> {result['rss_end_bytes'] / 2**20:.0f} MiB ({growth:+.1f}%); "
        f"(per minute: {per_minute} MiB); "
        f"swaps {len(result['swaps'])}; p50 last/first minute {result['median_p50_ratio_last_to_first_minute']}"
    )


if __name__ == "__main__":
    main()
