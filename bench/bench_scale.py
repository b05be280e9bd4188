"""Ten million vectors on one box (issue #15): parallel fill + merge, memory-mapped serving, the selector. One run.

    nice -n 5 python bench/bench_scale.py [--sizes 1000000,10000000] [--small] [--data /tmp/scale-bench]
        [--dim 512] [--fill-workers 2] [--bytes-per-vector 100] [--recall 0.95] [--queries 1000]
        [--out bench/results/scale.json] [--keep-data] [--serial-up-to N] [--key FACTORY --key-from N]

Data, per size n (written once under --data/n<N>, reused while bench.json matches): n + --queries rows of
one clustered Gaussian mixture (common.clustered_chunks: n/100 clusters, power-law spectrum, a shared mean
direction; a vector's nearest neighbour at cosine ~0.72, a random pair ~0.27: synthetic, not real photos'
embeddings), written 50,000 rows at a time as the index's own float16 shards (store.ShardWriter, 100,000
rows a shard) in a published version with a real items table and a manifest naming a tiny open_clip model
saved with --dim outputs (the server must load some model; a tiny one keeps its share of RSS small). The
last --queries rows are held out: never indexed, the queries of every measurement. Never more than one
50,000-row chunk of vectors is in this process's memory.

Builds: `xmodal reindex DIR --budget N*B --recall R` as a real process, first with one process filling
the index (--fill-workers 1), then with --fill-workers W (parallel fill + merge, indexer.parallel_fill):
wall seconds, the manifest's train/add/tune seconds, peak RSS (the largest single process, ru_maxrss from
wait4, and the sum over the process tree sampled every 0.1 s), and whether both index files are the same
bytes. The selector chooses the index for the budget (--bytes-per-vector B); both builds tune it.
--serial-up-to N skips the serial baseline above N; --key builds that factory key from --key-from on
(for a size whose selector choice cannot be trained in the time at hand: say so where reporting it).

Search, on the published (parallel) version:
    bytes/vector   the index file / n on disk; in RAM: RssAnon growth of faiss.read_index without mmap / n.
                   The float16 re-rank rows (2*dim B/vector) are counted apart: they stay on disk (pread)
    recall@10      against exact search over the stored rows (indexer.recall.RecallBench: a result counts
                   when its exact score reaches the true 10th) on the held-out queries, in process
                   (OpenIndex, as served: memory-mapped) and over HTTP
    latency        one query at a time, one faiss thread, in process; over HTTP one sequential client
                   (POST /v1/search/vector, k=10) against `xmodal serve` (xmodal.app.testing.Server)
    server         seconds from process start to /readyz 200, and its RSS (anon + file) when ready and
                   after the queries

Prints one table and writes JSON (--out) after every size, keeping other sizes' rows already there.
`--small` (20,000 x 64, 200 queries) runs the same code in about 30 s for tests/e2e/test_bench_scale.py.
Run time on the 2-core box, alone on it: 1M with both builds 10 min; 1M + 10M with --serial-up-to 1000000
41 min (10M: data 3 min, build 23 min, ground truth 3 min); 14 GB of disk under --data at 10M.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before numpy/faiss load OpenMP: spinning threads on a shared box

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import faiss  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
from common import clustered_chunks, cpu_model  # noqa: E402

from xmodal.app.testing import XMODAL, Server  # noqa: E402
from xmodal.indexer import store  # noqa: E402
from xmodal.indexer.manifest import Manifest, ModelInfo, VectorIndexInfo, package_version  # noqa: E402
from xmodal.indexer.reader import OpenIndex  # noqa: E402
from xmodal.indexer.recall import TIE_TOLERANCE, K, RecallBench  # noqa: E402
from xmodal.indexer.rows import StoredRows  # noqa: E402
from xmodal.indexer.searcher import exact_scores  # noqa: E402

HERE = Path(__file__).resolve().parent
MIB = 2**20
ITEM_ROWS = 1_000_000  # items table rows written at a time


# ---------------------------------------------------------------- data


def tiny_model(folder: Path, dim: int) -> tuple[str, str]:
    """xmodal-tiny-clip's architecture with `dim`-d outputs and seeded random weights, as a local-dir
    model: (spec, fingerprint)."""
    import open_clip
    import torch

    from xmodal.models.loading import load_model
    from xmodal.models.model_dir import save_model_dir

    spec = f"local-dir:{folder}"
    if not (folder / "open_clip_config.json").is_file():
        tiny = load_model("xmodal-tiny-clip", "cpu")
        config = {**open_clip.get_model_config("xmodal-tiny-clip"), "embed_dim": dim}
        torch.manual_seed(0)
        save_model_dir(open_clip.CLIP(**config), config, tiny.preprocess_cfg, folder)
    return spec, load_model(spec, "cpu").fingerprint


def ensure_data(folder: Path, n: int, dim: int, queries: int, model: tuple[str, str]) -> tuple[Path, np.ndarray]:
    """The size's index folder (a published version over the n rows) and the held-out queries."""
    wanted = {
        "n": n,
        "dim": dim,
        "queries": queries,
        "seed": 0,
        "generator": "common.clustered_chunks",
        "tables": "arrow",  # store.write_table's format: data written with Parquet tables is rewritten
        "model": list(model),
    }
    record, root = folder / "bench.json", folder / "index"
    if record.is_file() and json.loads(record.read_text()) == wanted and (folder / "queries.npy").is_file():
        print(f"reusing the data in {folder}", flush=True)
        return root, np.load(folder / "queries.npy").astype(np.float32)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.perf_counter()
    writer = store.VersionWriter(root)
    held: list[np.ndarray] = []
    try:
        shards, written = writer.shard_writer("images", dim), 0
        for block in clustered_chunks(n + queries, dim, clusters=max(1, n // 100)):
            keep = block[: max(0, n - written)]
            shards.add(keep)
            held.append(block[len(keep) :])
            written += len(block)
        names = shards.close()
        writer.write_index("images", faiss.index_factory(dim, "Flat", faiss.METRIC_INNER_PRODUCT))  # placeholder
        writer.write_table("items", items_table(n, str(folder / "photos")))
        writer.write_table(
            "skipped", pa.table({"path": pa.array([], pa.string()), "reason": pa.array([], pa.string())})
        )
        manifest = Manifest(
            xmodal_version=package_version(),
            model=ModelInfo(spec=model[0], fingerprint=model[1], embed_dim=dim),
            source=str(folder / "photos"),
            images=VectorIndexInfo(file="images.faiss", embeddings=names, count=n, index_key="Flat"),
        )
        writer.publish(manifest, keep=20)
    except BaseException:
        writer.abort()
        raise
    held_out = np.concatenate(held)
    np.save(folder / "queries.npy", held_out)
    record.write_text(json.dumps(wanted) + "\n")
    print(f"wrote {n:,} x {dim} float16 rows in {time.perf_counter() - started:.0f}s", flush=True)
    return root, held_out.astype(np.float32)


def items_table(n: int, source: str) -> pa.Table:
    """The items table's real columns, built ITEM_ROWS rows at a time (~175 B an item: 1.75 GB at 10M)."""
    chunks = []
    for start in range(0, n, ITEM_ROWS):
        ids = np.arange(start, min(start + ITEM_ROWS, n))
        paths = [f"photos/{i:08d}.jpg" for i in ids.tolist()]
        no_lists = pa.ListArray.from_arrays(pa.array(np.zeros(len(ids) + 1, np.int32)), pa.array([], pa.string()))
        chunks.append(
            pa.table(
                {
                    "id": pa.array(ids, pa.int64()),
                    "path": pa.array(paths, pa.string()),
                    "location": pa.array([f"{source}/{p}" for p in paths], pa.string()),
                    "width": pa.array(np.full(len(ids), 640, np.int32)),
                    "height": pa.array(np.full(len(ids), 480, np.int32)),
                    "sha256": pa.array([hashlib.sha256(p.encode()).hexdigest() for p in paths], pa.string()),
                    "captions": no_lists,
                    "duplicates": no_lists,
                    "generated_caption": pa.nulls(len(ids), pa.string()),
                }
            )
        )
    return pa.concat_tables(chunks)


# ---------------------------------------------------------------- builds


def tree_rss(pid: int) -> tuple[int, int]:
    """Resident bytes of `pid` and all its descendants, and of the largest one (0 once gone)."""
    total, largest, stack = 0, 0, [pid]
    while stack:
        current = stack.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            rss = int(status.split("VmRSS:")[1].split()[0]) * 1024
            total, largest = total + rss, max(largest, rss)
            for task in Path(f"/proc/{current}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, IndexError, ValueError):
            continue
    return total, largest


def build(root: Path, budget: int, recall: float, workers: int, log: Path, key: str | None = None) -> dict:
    """`xmodal reindex` in a real process; its wall time, peak RSS and the manifest it published."""
    command = [XMODAL, "reindex", str(root), "--budget", str(budget), "--recall", str(recall)]
    command += ["--fill-workers", str(workers), "--keep", "20", *(["--key", key] if key else [])]
    started = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        peak, done = [0, 0], threading.Event()

        def sample() -> None:  # wait4's ru_maxrss would start at this (torch-loaded) process's RSS: fork copies it
            while not done.wait(0.1):
                peak[:] = np.maximum(peak, tree_rss(process.pid)).tolist()

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        process.wait()
        done.set()
        sampler.join()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"reindex --fill-workers {workers} failed ({process.returncode}):\n{log.read_text()[-3000:]}")
    version = store.resolve_version(root)
    manifest = store.read_manifest(version)
    info = manifest.images
    steps = {k.removeprefix("reindex_images_"): v for k, v in manifest.timings_s.items() if "reindex_images_" in k}
    return {
        "fill_workers": workers,
        "seconds": round(seconds, 1),
        "steps_s": steps,
        "peak_rss_tree_sampled": peak[0],
        "peak_rss_largest_process_sampled": peak[1],
        "index_key": info.index_key,
        "search_params": info.search_params,
        "tuned_recall_at_10": info.measured_recall_at_10,
        "tuned_query_ms": info.measured_query_ms,
        "index_bytes": info.index_bytes,
        "version": version.name,
        "sha256": hashlib.sha256((version / "images.faiss").read_bytes()).hexdigest(),
    }


# ---------------------------------------------------------------- search


def status(pid: int | str = "self") -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile"):
            out[name] = int(value.split()[0]) * 1024
    return out


def percentiles(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def recall_of(bench: RecallBench, ids: np.ndarray) -> float:
    hits = exact_scores(bench.rows, bench.queries, ids) >= bench.kth_score[:, None] - TIE_TOLERANCE
    return float(hits.sum(axis=1).mean() / K)


OPENING = """
import json, sys, time
from pathlib import Path
import faiss
from xmodal.indexer import store
from xmodal.indexer.reader import OpenIndex

def anon():
    return int(Path("/proc/self/status").read_text().split("RssAnon:")[1].split()[0]) * 1024

before = anon()
started = time.perf_counter()
index = OpenIndex(sys.argv[1])
opened_s, opened = time.perf_counter() - started, anon() - before
items = index.items.nbytes
del index
before = anon()
loaded = faiss.read_index(str(store.resolve_version(sys.argv[1]) / "images.faiss"))
print(json.dumps({"open_s": round(opened_s, 2), "open_anon_bytes": opened, "items_table_bytes": items,
                  "ram_bytes": anon() - before}))
"""


def opening(root: Path) -> dict:
    """In a fresh process: OpenIndex's time and anonymous memory (as served: memory-mapped), the items
    table's share, and the index's RAM when read whole (no mmap)."""
    done = subprocess.run([sys.executable, "-c", OPENING, str(root)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def in_process(root: Path, bench: RecallBench) -> dict:
    """Recall and one-thread latency as served (OpenIndex: memory-mapped, re-ranking by pread)."""
    index = OpenIndex(root)
    searcher = index._image_searcher
    faiss.omp_set_num_threads(1)
    times, ids = [], []
    for query in bench.queries:
        started = time.perf_counter()
        _, found = searcher.search(query[None], K)
        times.append((time.perf_counter() - started) * 1000)
        ids.append(found[0])
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return {**opening(root), "recall_at_10": round(recall_of(bench, np.array(ids)), 4), **percentiles(times)}


def served(root: Path, bench: RecallBench, log: Path) -> dict:
    """`xmodal serve` on the index: ready time, RSS when ready and after one query per held-out query."""
    env = {"XMODAL_LOG_LEVEL": "warning", "XMODAL_OFFLINE": "1", "XMODAL_RATE_LIMIT_RPS": "0"}
    with Server(root, log, env=env) as server:
        ready_s = server.wait_ready(timeout=300)
        at_ready = status(server.process.pid)
        times, ids = [], []
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for query in bench.queries:
                started = time.perf_counter()
                response = client.post("/v1/search/vector", json={"vector": query.tolist(), "k": K})
                times.append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    raise SystemExit(f"search: {response.status_code} {response.text[:200]}")
                found = [hit["id"] for hit in response.json()["results"]]
                ids.append(found + [-1] * (K - len(found)))
        after = status(server.process.pid)
    return {
        "ready_s": round(ready_s, 2),
        "rss_ready": at_ready,
        "rss_after_queries": after,
        "recall_at_10": round(recall_of(bench, np.array(ids)), 4),
        **percentiles(times),
    }


# ---------------------------------------------------------------- one size, the table


def measure(n: int, args: argparse.Namespace, model: tuple[str, str]) -> dict:
    folder = args.data / f"n{n}"
    started = time.perf_counter()
    root, queries = ensure_data(folder, n, args.dim, args.queries, model)
    data_s = time.perf_counter() - started
    budget = n * args.bytes_per_vector
    builds = []
    for workers in (1, args.fill_workers) if n <= args.serial_up_to else (args.fill_workers,):
        print(f"{n:,}: reindex --fill-workers {workers} ...", flush=True)
        key = args.key if n >= args.key_from else None
        builds.append(build(root, budget, args.recall, workers, folder / f"reindex-{workers}.log", key))
        print(f"  {json.dumps(builds[-1])}", flush=True)
    version = store.resolve_version(root)
    info = store.read_manifest(version).images
    started = time.perf_counter()
    bench = RecallBench(StoredRows(store.map_vectors(version, info.embeddings), file_reads=True), queries)
    truth_s = time.perf_counter() - started
    search = in_process(root, bench)
    print(f"  in process: {json.dumps(search)}", flush=True)
    server = served(root, bench, folder / "serve.log")
    print(f"  served: {json.dumps(server)}", flush=True)
    serial, parallel = builds if len(builds) == 2 else ({}, builds[0])
    return {
        "n": n,
        "dim": args.dim,
        "queries": len(queries),
        "budget_bytes": budget,
        "forced_key": args.key if n >= args.key_from else None,
        "index_key": parallel["index_key"],
        "search_params": parallel["search_params"],
        "disk_bytes_per_vector": round(parallel["index_bytes"] / n, 1),
        "ram_bytes_per_vector": round(search["ram_bytes"] / n, 1),
        "rerank_bytes_per_vector": 2 * args.dim,
        "in_process": search,
        "served": server,
        "builds": builds,
        "fill_speedup": round(serial["steps_s"]["add"] / parallel["steps_s"]["add"], 2) if serial else None,
        "build_speedup": round(serial["seconds"] / parallel["seconds"], 2) if serial else None,
        "same_index_file": serial["sha256"] == parallel["sha256"] if serial else None,
        "data_s": round(data_s, 1),
        "ground_truth_s": round(truth_s, 1),
        "data_bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}",
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| n | index | params | B/vec disk | B/vec RAM | recall@10 in proc / HTTP | p50/p99 ms in proc | "
        "p50/p99 ms HTTP | ready | RSS ready / after | build serial | build parallel | fill ratio | same |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s, p = r["builds"] if len(r["builds"]) == 2 else ({}, r["builds"][0])
        serial = f"{s['seconds']} s, {s['peak_rss_tree_sampled'] / MIB:,.0f} MiB" if s else "not run"
        ready, after = r["served"]["rss_ready"]["VmRSS"], r["served"]["rss_after_queries"]["VmRSS"]
        lines.append(
            f"| {r['n']:,} | `{r['index_key']}` | {r['search_params']} | {r['disk_bytes_per_vector']} | "
            f"{r['ram_bytes_per_vector']} | {r['in_process']['recall_at_10']:.3f} / {r['served']['recall_at_10']:.3f} | "
            f"{r['in_process']['p50_ms']} / {r['in_process']['p99_ms']} | {r['served']['p50_ms']} / {r['served']['p99_ms']} | "
            f"{r['served']['ready_s']} s (open {r['in_process']['open_s']} s) | {ready / MIB:,.0f} / {after / MIB:,.0f} MiB | "
            f"{serial} | "
            f"{p['seconds']} s, {p['peak_rss_tree_sampled'] / MIB:,.0f} MiB | {r['fill_speedup']} | "
            f"{ {True: 'yes', False: 'NO', None: '-'}[r['same_index_file']] } |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000000,10000000", help="comma-separated vector counts")
    parser.add_argument("--small", action="store_true", help="20,000 x 64, 200 queries: the test's quick run")
    parser.add_argument("--data", type=Path, default=Path("/tmp/scale-bench"))
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--fill-workers", type=int, default=2)
    parser.add_argument("--bytes-per-vector", type=int, default=100, help="the budget: n * this many bytes")
    parser.add_argument("--recall", type=float, default=0.95)
    parser.add_argument("--key", help="build this index_factory key instead of the selector's choice (see --key-from)")
    parser.add_argument("--key-from", type=int, default=0, help="--key applies to sizes from this n on")
    parser.add_argument(
        "--serial-up-to", type=int, default=10**12, help="build serially too (the baseline) only up to this n"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "scale.json")
    parser.add_argument("--keep-data", action="store_true", help="keep --data (default: delete it at the end)")
    args = parser.parse_args()
    if args.small:
        args.sizes, args.dim, args.queries = "20000", 64, 200
    sizes = [int(s) for s in args.sizes.split(",")]
    args.data.mkdir(parents=True, exist_ok=True)
    model = tiny_model(args.data / f"model-{args.dim}", args.dim)
    kept = json.loads(args.out.read_text())["sizes"] if args.out.is_file() else []
    rows: list[dict] = []
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())  # a row's run: rows of other runs are kept
    try:
        for n in sizes:
            rows.append({"command": " ".join(sys.argv), "started": started, **measure(n, args, model)})
            others = [r for r in kept if (r["n"], r["dim"]) not in {(x["n"], x["dim"]) for x in rows}]
            everything = sorted(others + rows, key=lambda r: (r["dim"], r["n"]))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"sizes": everything}, indent=2) + "\n")
            print(table(everything), flush=True)
    finally:
        if not args.keep_data:
            shutil.rmtree(args.data, ignore_errors=True)


if __name__ == "__main__":
    main()
