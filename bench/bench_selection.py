"""Every index type the selector can pick, built and tuned the way `xmodal reindex` does, on one data set.

    OMP_WAIT_POLICY=PASSIVE python bench/bench_selection.py [--n 1000000] [--dim 512] [--hnsw-max-s 1500]
    python bench/bench_selection.py --from-index INDEX_DIR      # the stored embeddings of an index

Data: a clustered synthetic distribution (uniform random unit vectors are a worst case for IVF): a Gaussian
mixture of n/100 clusters whose centres and noise follow a power-law spectrum (scale_i ~ (1+i)^-0.5) in a
random rotation, plus a shared mean direction (CLIP-like embeddings share one), L2-normalised and rounded
to float16 as xmodal stores them. At spread 1.2, a vector's nearest neighbour has cosine ~0.72, its 10th
~0.67, a random pair ~0.27 +- 0.12: IVF needs ~3% of its lists for recall@10 0.95, like real embeddings.

Per type: build time (train + add), tuning time, index bytes (the file), recall@10 against exact search
at the tuned parameters (on the tuning queries: the last 1,000 rows, held out of the index while tuning;
and on 1,000 other fresh queries from the same mixture), and per-query latency: batch 1 on
one thread (median; how a server answering concurrent requests uses it) and batch 100 on all threads.
The PQ types are built for a tight budget (about dim/8 + 8 bytes a vector: 1/28 of Flat at 512-d). HNSW is added in chunks and stopped
at --hnsw-max-s; it is then measured on the vectors added so far (the n column says how many).
Prints one table, writes JSON (bench/results/selection.json).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from common import clustered_vectors, cpu_model

from xmodal.indexer.faiss_build import train_and_add
from xmodal.indexer.recall import RecallBench, single_query_ms
from xmodal.indexer.rows import StoredRows
from xmodal.indexer.searcher import Searcher, read_flags
from xmodal.indexer.selection import IndexChoice, choose_index_keys, estimate_bytes, format_bytes, ivf_lists
from xmodal.indexer.tuning import held_out_count, tune_search_params

HERE = Path(__file__).resolve().parent
KINDS = ("flat", "hnsw", "ivf_flat", "opq_ivf_pq", "ivf_pq")


def candidates(n: int, dim: int) -> dict[str, IndexChoice]:
    """One key per kind: the selector's, with no budget (Flat, HNSW, IVF-Flat) and a tight one (PQ)."""
    chosen = {c.kind: c for c in choose_index_keys(n, dim, None, latency_ms=0)}
    tight = int(estimate_bytes(f"IVF{ivf_lists(n)},PQ{dim // 8}", n, dim) * 1.05)  # dim/8-byte codes (1/29 of Flat)
    chosen.update({c.kind: c for c in choose_index_keys(n, dim, tight, latency_ms=0) if c.kind.endswith("pq")})
    chosen["flat"] = next(c for c in choose_index_keys(n, dim, None, latency_ms=None) if c.kind == "flat")
    return chosen


def batch_latency_ms(searcher: Searcher, queries: np.ndarray, batch: int, repeats: int) -> float:
    """Median ms per query of searching `batch` queries at once, all threads."""
    times = []
    for r in range(repeats):
        chunk = queries[(r * batch) % len(queries) :][:batch]
        started = time.perf_counter()
        searcher.search(chunk, 10)
        times.append((time.perf_counter() - started) / len(chunk))
    return float(np.median(times) * 1000)


def file_size_and_mapped_rss(index: faiss.Index, key: str, folder: Path) -> tuple[int, int | None]:
    path = folder / "index.faiss"
    faiss.write_index(index, str(path))
    size = path.stat().st_size
    rss = None
    if read_flags(key):
        before = _rss()
        mapped = faiss.read_index(str(path), read_flags(key))
        rss = _rss() - before
        del mapped
    path.unlink()
    return size, rss


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bench_kind(
    choice: IndexChoice, vectors: np.ndarray, fresh: np.ndarray, recall: float, hnsw_max_s: float, folder: Path
) -> dict:
    n, dim = vectors.shape
    print(f"  {choice.key}: building ({choice.reason})", flush=True)
    indexed = n - held_out_count(n)  # the last rows: tuning queries, added after tuning (as build_vector_index)
    rng = np.random.default_rng(0)
    train_size = min(choice.train_size, indexed)
    train_ids = np.sort(rng.choice(indexed, train_size, replace=False)) if train_size else np.array([], int)
    started = time.perf_counter()
    stopped_early = False
    if choice.kind == "hnsw":
        index = faiss.index_factory(dim, choice.key, faiss.METRIC_INNER_PRODUCT)
        for start in range(0, indexed, 50_000):
            index.add(vectors[start : min(start + 50_000, indexed)])
            if time.perf_counter() - started > hnsw_max_s and start + 50_000 < indexed:
                stopped_early = True
                break
        seconds = {"train": 0.0, "add": round(time.perf_counter() - started, 1)}
    else:
        index, seconds = train_and_add(vectors[:indexed], choice, train_ids)
    build_s = time.perf_counter() - started
    indexed_rows = vectors[: index.ntotal]
    print(f"    built {index.ntotal:,} in {build_s:.0f}s {seconds}; tuning", flush=True)
    started = time.perf_counter()
    tuning = tune_search_params(index, choice, indexed_rows, vectors[indexed:], recall)
    tune_s = time.perf_counter() - started
    rows = StoredRows(indexed_rows)
    searcher = Searcher(index, tuning.params, rows)
    fresh_recall = RecallBench(rows, fresh).recall(searcher)
    queries = vectors[indexed:][:200]
    flat_like = choice.kind == "flat"
    batch1 = single_query_ms(searcher, queries[: 50 if flat_like else 200])
    batch100 = batch_latency_ms(searcher, queries, 100, 3 if flat_like else 10)
    size, mapped_rss = file_size_and_mapped_rss(index, choice.key, folder)
    row = {
        "kind": choice.kind,
        "key": choice.key,
        "n": index.ntotal,
        "stopped_early": stopped_early,
        "build_s": round(build_s, 1),
        "train_s": seconds.get("train"),
        "add_s": seconds.get("add"),
        "tune_s": round(tune_s, 1),
        "search_params": tuning.params,
        "index_bytes": size,
        "estimated_bytes": estimate_bytes(choice.key, index.ntotal, dim),
        "mmap_rss_bytes": mapped_rss,
        "recall_at_10_tuning": round(tuning.recall, 4),
        "recall_at_10_fresh": round(fresh_recall, 4),
        "batch1_ms": round(batch1, 3),
        "batch100_ms_per_query": round(batch100, 3),
        "evaluations": len(tuning.tried),
    }
    print(f"    {json.dumps(row)}", flush=True)
    del index, searcher
    gc.collect()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--recall", type=float, default=0.95)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--hnsw-max-s", type=float, default=1500, help="stop adding to HNSW after this long")
    parser.add_argument("--from-index", type=Path, help="bench the stored image embeddings of this index instead")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "selection.json")
    args = parser.parse_args()

    started = time.perf_counter()
    if args.from_index:
        from xmodal.indexer import store

        version = store.resolve_version(args.from_index)
        manifest = store.read_manifest(version)
        stored = store.read_vectors(version, manifest.images.embeddings)
        rng = np.random.default_rng(0)
        fresh_ids = rng.choice(len(stored), min(200, len(stored) // 5), replace=False)
        vectors, fresh = np.delete(stored, fresh_ids, axis=0), stored[fresh_ids]
        data = (
            f"stored image embeddings of {version} ({manifest.model.spec}); fresh queries = {len(fresh)} held-out rows"
        )
    else:
        held = held_out_count(args.n + 1000)  # the tuning queries, so that the index holds exactly --n rows
        everything = clustered_vectors(args.n + held + 1000, args.dim)
        vectors, fresh = everything[: args.n + held], everything[args.n + held :]
        data = "clustered synthetic (Gaussian mixture, n/100 clusters, spread 1.2, power-law spectrum, float16)"
    n, dim = vectors.shape
    print(f"{n:,} x {dim} vectors ready in {time.perf_counter() - started:.0f}s; {data}", flush=True)

    chosen = candidates(n, dim) if n >= 10_000 else {c.kind: c for c in choose_index_keys(n, dim)}
    kinds = [kind for kind in args.kinds.split(",") if kind in chosen]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            rows.append(bench_kind(chosen[kind], vectors, fresh, args.recall, args.hnsw_max_s, Path(tmp)))

    hardware = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {cpu_model()}"
    result = {
        "data": data,
        "n": n - held_out_count(n),
        "held_out_tuning_queries": held_out_count(n),
        "dim": dim,
        "recall_target": args.recall,
        "hardware": hardware,
        "faiss": faiss.__version__,
        "omp_threads": faiss.omp_get_max_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
        "load_average_at_end": os.getloadavg(),
        "total_s": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    header = (
        f"{'index':<26}{'n':>10}{'build s':>9}{'tune s':>8}{'bytes':>11}{'params':>22}{'R@10 tune':>10}"
        f"{'R@10 fresh':>11}{'b1 ms':>8}{'b100 ms/q':>10}"
    )
    print(f"\n{data}\n{hardware}, faiss {faiss.__version__}\n{header}")
    for row in rows:
        print(
            f"{row['key']:<26}{row['n']:>10,}{row['build_s']:>9.0f}{row['tune_s']:>8.0f}"
            f"{format_bytes(row['index_bytes']):>11}{row['search_params'] or '-':>22}{row['recall_at_10_tuning']:>10.3f}"
            f"{row['recall_at_10_fresh']:>11.3f}{row['batch1_ms']:>8.2f}{row['batch100_ms_per_query']:>10.3f}"
        )
    print(f"total {result['total_s']:.0f}s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
