"""Clustered synthetic unit vectors (a Gaussian mixture), like bench/bench_selection.py's at test size."""

from __future__ import annotations

import numpy as np


def clustered_unit_vectors(
    n: int, dim: int, *, clusters: int = 200, spread: float = 1.2, mixture_seed: int = 0, seed: int = 0
) -> np.ndarray:
    """n float16-rounded unit vectors from a fixed mixture (`mixture_seed`); `seed` draws the points,
    so another seed gives fresh queries from the same distribution."""
    mixture = np.random.default_rng(mixture_seed)
    scale = (1.0 + np.arange(dim, dtype=np.float32)) ** -0.5
    scale *= np.sqrt(dim) / np.linalg.norm(scale)
    centers = mixture.standard_normal((clusters, dim), dtype=np.float32) * scale
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    rng = np.random.default_rng(seed + 1_000)
    x = centers[rng.integers(0, clusters, n)] + rng.standard_normal((n, dim), dtype=np.float32) * scale * (
        spread / np.sqrt(dim)
    )
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x.astype(np.float16).astype(np.float32))
