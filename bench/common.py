"""Code the benchmarks share: synthetic embeddings, a closed-loop HTTP load generator, the CPU's name.

Scripts run as `python bench/bench_NAME.py`, so this folder is on sys.path and `from common import ...`
works without path edits; the real-server runner they share with the tests is xmodal.app.testing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np


def clustered_vectors(
    n: int,
    dim: int,
    seed: int = 0,
    spread: float = 1.2,
    decay: float = 0.5,
    mean: float = 0.6,
    per_cluster: int = 100,
    chunk: int = 50_000,
) -> np.ndarray:
    """float16-rounded unit vectors (returned as float32) from a clustered mixture like real embeddings.

    A Gaussian mixture of n/per_cluster clusters whose centres and noise follow a power-law spectrum
    (scale_i ~ (1+i)^-decay) in a random rotation, plus a shared mean direction (CLIP-like embeddings
    share one), L2-normalised. At spread 1.2 a vector's nearest neighbour has cosine ~0.72, its 10th
    ~0.67, a random pair ~0.27 +- 0.12 (uniform random unit vectors would be a worst case for IVF).
    """
    out = np.empty((n, dim), np.float32)
    start = 0
    for block in clustered_chunks(n, dim, seed, spread, decay, mean, per_cluster, chunk):
        out[start : start + len(block)] = block
        start += len(block)
    return out


def clustered_chunks(
    n: int,
    dim: int,
    seed: int = 0,
    spread: float = 1.2,
    decay: float = 0.5,
    mean: float = 0.6,
    per_cluster: int = 100,
    chunk: int = 50_000,
    clusters: int | None = None,
) -> Iterator[np.ndarray]:
    """clustered_vectors' rows, `chunk` at a time as float16 (the same rows: 10M x 512 never in RAM at once).
    `clusters`: the mixture's size when not n/per_cluster (draw more rows from one mixture, e.g. queries)."""
    rng = np.random.default_rng(seed)
    clusters = clusters or max(1, n // per_cluster)
    scale = ((1.0 + np.arange(dim)) ** -decay).astype(np.float32)
    scale /= np.linalg.norm(scale) / np.sqrt(dim)
    rotation = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
    shared = rng.standard_normal(dim, dtype=np.float32)
    shared /= np.linalg.norm(shared)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32) * scale
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = rng.standard_normal((m, dim), dtype=np.float32) * (scale * np.float32(spread / np.sqrt(dim)))
        x += centres[rng.integers(0, clusters, m)]
        x = x @ rotation
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        x += mean * shared
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        yield x.astype(np.float16)


async def closed_loop(url: str, clients: int, seconds: float, send, max_requests: int = 100_000) -> dict:
    """`clients` httpx clients, each sending `await send(client, number, i)` (its i-th request) and waiting for
    the answer before the next, for `seconds` (and at most `max_requests` answers in all): QPS and latency of
    the 200s, other answers and timeouts counted as errors."""
    latencies, errors, statuses = [], 0, {}
    stop_at = time.monotonic() + seconds

    async def client_loop(number: int) -> None:
        nonlocal errors
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            i = 0
            while time.monotonic() < stop_at and len(latencies) < max_requests:
                started = time.perf_counter()
                try:
                    response = await send(client, number, i)
                except httpx.TimeoutException:
                    errors += 1
                    continue
                finally:
                    i += 1
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    started = time.monotonic()
    await asyncio.gather(*(client_loop(number) for number in range(clients)))
    elapsed = time.monotonic() - started
    ms = np.array(latencies) * 1000
    return {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "requests": len(ms),
        "errors": errors,
        "error_statuses": statuses,
        "qps": round(len(ms) / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None,
    }


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, for the hardware line of a result."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"
