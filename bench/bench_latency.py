"""Low-load latency of text → image search over HTTP on a 1M x 512 index (issue #6, P3), one run.

    OMP_WAIT_POLICY=PASSIVE python bench/bench_latency.py [--queries 300] [--image-queries 100]
        [--qps-seconds 15] [--clients 8] [--budget 2GB | --key FACTORY_KEY] [--rebuild] [--app-root DIR]

Index (built once, cached in --cache-dir, e.g. ~/.cache/xmodal/bench/latency-1m; --rebuild forces it):
1M clustered synthetic unit vectors of dim 512 (common.clustered_vectors, float16 as stored),
written the way `xmodal index` writes a version (store.VersionWriter, faiss_build.build_vector_index: the
selector's first choice for the size and budget, tuned to recall@10 0.95 on held-out rows, or --key), an
items table with the real columns (paths point at no files: item image routes answer 404), and a manifest
naming the model spec with its real weights fingerprint, so `xmodal serve --index DIR` serves it. The 300
rows after the first 1M of the same mixture are kept as fresh in-distribution queries.

Measurement: `python -m xmodal.app.cli serve` from --app-root (default: this checkout) in a subprocess on
127.0.0.1; after a warm-up one sequential client (httpx, keep-alive) sends, per query and interleaved so
that load swings hit every row alike: GET /healthz (the HTTP floor), POST /v1/embed/text (encoding
alone), POST /v1/search/vector with that text's embedding (FAISS + result rows alone), /v1/search/vector
with a fresh synthetic vector, and POST /v1/search/text (end to end), all k=10; then /v1/embed/image and
/v1/search/image with the smallest JPEGs of --photos (multipart), and a --qps-seconds run of image search
with --clients concurrent clients. Client-side latency and the server's took_ms per row. After the server
stops, recall@10 of the served results against exact search over the stored float16 shards, for the
embeddings the server returned (a result counts when its exact score reaches the true 10th, as in
indexer.recall.RecallBench). Then, in this process with no server, the split: encode_texts of one text,
OpenIndex.item_rows of a query's 10 result ids, and the index alone on one thread up its search-parameter
ladder (efSearch or nprobe) with recall@10 per query set, until text and image queries reach 0.95 or a
query takes --sweep-max-ms. Prints one table and writes JSON (bench/results/latency.json; the server's
log beside it). The server runs with XMODAL_LOG_LEVEL=warning (no access log), XMODAL_OFFLINE=1 and
XMODAL_RATE_LIMIT_RPS=0; any answer but 200 stops the run (recall pairs answers with queries by position).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before faiss/torch load OpenMP: spinning threads on a shared box

import argparse  # noqa: E402
import asyncio  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import faiss  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
from common import closed_loop, clustered_vectors, cpu_model  # noqa: E402 - shared with the batching and selection benches

from xmodal.app.testing import Server  # noqa: E402 - the e2e tests' server runner, given the checkout to serve
from xmodal.indexer import store  # noqa: E402
from xmodal.indexer.faiss_build import build_vector_index
from xmodal.indexer.manifest import Manifest, ModelInfo, VectorIndexInfo, package_version  # noqa: E402
from xmodal.indexer.reader import OpenIndex  # noqa: E402
from xmodal.indexer.recall import TIE_TOLERANCE, exact_search
from xmodal.indexer.rows import StoredRows
from xmodal.indexer.searcher import Searcher, SearchParams, exact_scores, is_ivf
from xmodal.indexer.selection import parse_bytes  # noqa: E402
from xmodal.indexer.tuning import EF_SEARCH, probe_ladder

HERE = Path(__file__).resolve().parent
K = 10
FRESH = 300  # in-distribution queries: the rows after the first n of the same mixture
COLOURS = ["red", "blue", "green", "yellow", "black", "white", "brown", "orange", "purple", "grey"]
THINGS = ["dog", "cat", "car", "bus", "train", "pizza", "child", "horse", "bicycle", "boat", "kite", "bird"]
PLACES = [
    "on a beach",
    "in a kitchen",
    "on the street",
    "in a park",
    "near a mountain",
    "at night",
    "in the snow",
    "on a table",
    "by the river",
    "in a field",
]


# ---------------------------------------------------------------- the index


def cache_folder(cache_dir: Path, n: int, key: str | None, budget: str | None) -> Path:
    name = "latency-" + ("1m" if n == 1_000_000 else str(n))
    extra = "-".join(filter(None, [key, budget and f"budget{budget}"]))
    return cache_dir / (name + ("-" + re.sub(r"[^A-Za-z0-9._]+", "_", extra) if extra else ""))


def build_or_reuse(
    folder: Path, n: int, dim: int, spec: str, key: str | None, budget: str | None, recall: float, rebuild: bool
) -> dict:
    """The cached index's build record (bench.json); builds it first when missing, stale or --rebuild."""
    from xmodal.models.loading import load_model

    wanted = {"n": n, "dim": dim, "model": spec, "key": key, "budget": budget, "recall": recall, "data_seed": 0}
    record_path = folder / "bench.json"
    loaded = load_model(spec, "cpu")
    fingerprint, embed_dim = loaded.fingerprint, loaded.embed_dim
    del loaded
    if embed_dim != dim:
        sys.exit(f"{spec} embeds in {embed_dim} dimensions, not {dim}")
    if not rebuild and record_path.is_file():
        record = json.loads(record_path.read_text())
        try:
            manifest = store.read_manifest(store.resolve_version(folder))
        except (store.IndexNotFound, OSError, ValueError):
            manifest = None
        if (
            {k: record.get(k) for k in wanted} == wanted
            and manifest is not None
            and manifest.model.fingerprint == fingerprint
            and (folder / "fresh-queries.npy").is_file()
        ):
            print(f"reusing {folder} ({manifest.images.index_key} {manifest.images.search_params})", flush=True)
            return record
        print(f"{folder} is stale (other settings or weights); rebuilding", flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)

    started = time.perf_counter()
    everything = clustered_vectors(n + FRESH, dim)
    vectors, fresh = everything[:n], np.ascontiguousarray(everything[n:])
    del everything
    generated_s = time.perf_counter() - started
    print(f"{n:,} x {dim} vectors in {generated_s:.0f}s; building the index (HNSW32 at 1M: ~25 min here)", flush=True)
    budget_bytes = parse_bytes(budget) if budget else None
    built = build_vector_index(vectors, budget_bytes, recall, key=key)
    print(
        f"built {built.key} {built.search_params} recall@10 {built.measured_recall_at_10} {built.seconds}", flush=True
    )
    writer = store.VersionWriter(folder)
    try:
        shards = writer.write_vectors("images", vectors, built.index)
        size = (writer.tmp / "images.faiss").stat().st_size
        manifest = Manifest(
            xmodal_version=package_version(),
            model=ModelInfo(spec=spec, fingerprint=fingerprint, embed_dim=dim),
            source=str(folder / "no-images"),  # no image files: item image routes answer 404
            source_kind="folder",
            images=VectorIndexInfo(
                file="images.faiss", embeddings=shards, count=n, index_bytes=size, **built.manifest_fields()
            ),
        )
        writer.write_table("items", synthetic_items(n, manifest.source))
        writer.write_table(
            "skipped", pa.table({"path": pa.array([], pa.string()), "reason": pa.array([], pa.string())})
        )
        manifest.timings_s = {"generate": round(generated_s, 3), "total": round(time.perf_counter() - started, 3)}
        version = writer.publish(manifest, keep=1)
    except BaseException:
        writer.abort()
        raise
    np.save(folder / "fresh-queries.npy", fresh.astype(np.float16))
    record = {
        **wanted,
        "version": version.name,
        "index_key": built.key,
        "search_params": built.search_params,
        "measured_recall_at_10": built.measured_recall_at_10,
        "measured_query_ms": built.measured_query_ms,
        "build_seconds": built.seconds,
        "total_build_s": round(time.perf_counter() - started, 1),
        "rejected": list(built.rejected),
        "tried": [list(t) for t in built.tried],
        "index_bytes": size,
        "built_on": f"{cpu_model()}, {os.cpu_count()} cores, load {_load()}",
    }
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def synthetic_items(n: int, source: str) -> pa.Table:
    """The columns indexer.build writes for items (no source metadata columns)."""
    paths = [f"synthetic/{i:07d}.jpg" for i in range(n)]
    no_lists = pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], pa.string()))
    return pa.table(
        {
            "id": pa.array(np.arange(n, dtype=np.int64)),
            "path": pa.array(paths, pa.string()),
            "location": pa.array([f"{source}/{p}" for p in paths], pa.string()),
            "width": pa.array(np.full(n, 224, np.int32)),
            "height": pa.array(np.full(n, 224, np.int32)),
            "sha256": pa.array([hashlib.sha256(p.encode()).hexdigest() for p in paths], pa.string()),
            "captions": no_lists,
            "duplicates": no_lists,
            "generated_caption": pa.nulls(n, pa.string()),
        }
    )


# ---------------------------------------------------------------- the server

# ---------------------------------------------------------------- measuring


class Row:
    """One endpoint's client-side latencies, server took_ms, and what it returned per query."""

    def __init__(self, name: str):
        self.name, self.client_ms, self.server_ms, self.ids, self.vectors = name, [], [], [], []

    def call(self, client: httpx.Client, method: str, path: str, **kwargs) -> dict:
        started = time.perf_counter()
        response = client.request(method, path, **kwargs)
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            # Recall pairs each answer with its query by position: a missing answer would misalign every
            # later one (a run hit the per-client rate limit and reported recall 0.17 for 0.94).
            raise SystemExit(f"{self.name}: {response.status_code} {response.text[:200]}; every request must succeed")
        self.client_ms.append(elapsed)
        body = response.json()
        if "took_ms" in body:
            self.server_ms.append(body["took_ms"])
        if "results" in body:
            self.ids.append([hit["id"] for hit in body["results"]])
        if "embeddings" in body:
            self.vectors.append(body["embeddings"][0])
        return body

    def summary(self) -> dict:
        ms = np.array(self.client_ms)
        out = {"requests": len(ms)}  # every request answered 200 (call stops the run otherwise)
        if len(ms):
            out.update({f"p{q}_ms": round(float(np.percentile(ms, q)), 2) for q in (50, 90, 99)})
            out["mean_ms"] = round(float(ms.mean()), 2)
            out["max_ms"] = round(float(ms.max()), 2)
        if self.server_ms:
            server = np.array(self.server_ms)
            out.update(
                {
                    "server_p50_ms": round(float(np.percentile(server, 50)), 2),
                    "server_p99_ms": round(float(np.percentile(server, 99)), 2),
                }
            )
        return out


def query_texts(count: int, seed: int = 0) -> list[str]:
    """`count` distinct short queries ("a red dog on a beach", "two cats", ...), 2-6 words."""
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    while len(texts) < count:
        colour, thing, place = rng.choice(COLOURS), rng.choice(THINGS), rng.choice(PLACES)
        form = rng.integers(4)
        text = [f"a {colour} {thing} {place}", f"{thing} {place}", f"two {thing}s", f"{colour} {thing}"][form]
        if text not in texts:
            texts.append(text)
    return texts


def sequential_text(url: str, texts: list[str], warm_texts: list[str], fresh: np.ndarray) -> dict[str, Row]:
    rows = {
        name: Row(name)
        for name in ("healthz", "embed_text", "search_vector_text", "search_vector_fresh", "search_text")
    }
    with httpx.Client(base_url=url, timeout=60) as client:
        for i, text in enumerate(warm_texts):  # warm-up: not recorded
            client.get("/healthz")
            client.post("/v1/embed/text", json={"text": text})
            client.post("/v1/search/vector", json={"vector": fresh[-1 - i % len(fresh)].tolist(), "k": K})
            client.post("/v1/search/text", json={"text": text, "k": K})
        for i, text in enumerate(texts):
            rows["healthz"].call(client, "GET", "/healthz")
            body = rows["embed_text"].call(client, "POST", "/v1/embed/text", json={"text": text})
            if body is not None:
                rows["search_vector_text"].call(
                    client, "POST", "/v1/search/vector", json={"vector": body["embeddings"][0], "k": K}
                )
            rows["search_vector_fresh"].call(
                client, "POST", "/v1/search/vector", json={"vector": fresh[i % len(fresh)].tolist(), "k": K}
            )
            rows["search_text"].call(client, "POST", "/v1/search/text", json={"text": text, "k": K})
    return rows


def sequential_images(url: str, images: list[tuple[str, bytes]], count: int, warmup: int) -> dict[str, Row]:
    rows = {name: Row(name) for name in ("embed_image", "search_image")}
    with httpx.Client(base_url=url, timeout=60) as client:
        for name, data in images[:warmup]:
            client.post("/v1/search/image", files={"file": (name, data, "image/jpeg")}, data={"k": str(K)})
        for i in range(count):
            name, data = images[i % len(images)]
            rows["embed_image"].call(client, "POST", "/v1/embed/image", files={"file": (name, data, "image/jpeg")})
            rows["search_image"].call(
                client, "POST", "/v1/search/image", files={"file": (name, data, "image/jpeg")}, data={"k": str(K)}
            )
    return rows


async def image_qps(url: str, images: list[tuple[str, bytes]], clients: int, seconds: float) -> dict:
    """Image searches from `clients` concurrent clients, taking the images in turn."""

    def send(client: httpx.AsyncClient, number: int, i: int):
        name, data = images[(number + i * clients) % len(images)]
        return client.post("/v1/search/image", files={"file": (name, data, "image/jpeg")}, data={"k": str(K)})

    return await closed_loop(url, clients, seconds, send)


# ---------------------------------------------------------------- recall and the in-process split


class Truth:
    """Exact top-10 scores of `queries` over the stored float16 shards (memory-mapped, one shard at a time)."""

    def __init__(self, version: Path, shards: list[str], queries: np.ndarray):
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.rows = StoredRows(store.map_vectors(version, shards))
        best = np.full((len(self.queries), 0), -np.inf, np.float32)
        for shard in self.rows.shards:
            scores, _ = exact_search(shard, self.queries, K)
            best = -np.sort(-np.concatenate([best, scores], axis=1), axis=1)[:, :K]
        self.kth, self.first = best[:, -1], best[:, 0]

    def recall(self, served_ids: list[list[int]] | np.ndarray) -> dict:
        """recall@10: a result counts when its exact score reaches the true 10th (as indexer.recall.RecallBench)."""
        ids = np.full((len(self.queries), K), -1, np.int64)
        for row, found in zip(ids, served_ids):
            found = list(found)[:K]
            row[: len(found)] = found
        hits = exact_scores(self.rows, self.queries, ids) >= self.kth[:, None] - TIE_TOLERANCE
        per_query = hits.sum(axis=1) / K
        return {
            "recall_at_10": round(float(per_query.mean()), 4),
            "min_query_recall": round(float(per_query.min()), 2),
            "queries": len(self.queries),
            "true_1st_score_median": round(float(np.median(self.first)), 4),
            "true_10th_score_median": round(float(np.median(self.kth)), 4),
        }


def encode_in_process(spec: str, texts: list[str], warm_texts: list[str]) -> dict:
    """encode_texts of one text at a time in this process (no server, no HTTP): the model's own cost."""
    from xmodal.models.encoders import Encoder

    encoder = Encoder.from_spec(spec, "cpu")
    for text in warm_texts:
        encoder.encode_texts([text])
    ms = []
    for text in texts:
        started = time.perf_counter()
        encoder.encode_texts([text])
        ms.append((time.perf_counter() - started) * 1000)
    import torch

    return {**_percentiles(ms), "torch_threads": torch.get_num_threads()}


def item_rows_in_process(opened, served_ids: list[list[int]]) -> dict:
    """OpenIndex.item_rows (the result rows every search answers with) for each query's served ids."""
    ms = []
    for ids in served_ids:
        started = time.perf_counter()
        opened.item_rows(list(ids))
        ms.append((time.perf_counter() - started) * 1000)
    return {**_percentiles(ms), "items_chunks": opened.items.column("path").num_chunks}


def faiss_sweep(opened, truths: dict[str, Truth], timed: int, max_ms: float, target: float) -> list[dict]:
    """The served index (an indexer.reader.OpenIndex) in this process, one thread: recall@10 per query set and
    single-query latency on the text embeddings, up its search-parameter ladder (indexer.tuning's) until text
    and image recall reach `target`, the ladder ends or a query takes over `max_ms`."""
    info, index, version = opened.manifest.images, opened.image_index, opened.version
    served = SearchParams.parse(info.search_params)
    if "HNSW" in info.index_key and not is_ivf(info.index_key):
        ladder = [SearchParams(f"efSearch={ef}") for ef in EF_SEARCH]
    elif is_ivf(info.index_key):
        nlist = faiss.extract_index_ivf(index).nlist
        ladder = [SearchParams(f"nprobe={p}", served.rerank) for p in probe_ladder(nlist)]
    else:
        ladder = [served]
    rows = StoredRows(store.map_vectors(version, info.embeddings)) if served.rerank else None
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    out = []
    try:
        for params in ladder:
            searcher = Searcher(index, params, rows)
            row = {"params": str(params), "served": str(params) == str(served)}
            for name, truth in truths.items():
                row[f"recall_{name}"] = truth.recall(searcher.search(truth.queries, K)[1])["recall_at_10"]
            text_queries = truths["text"].queries[:timed]
            ms = []
            for query in text_queries:
                started = time.perf_counter()
                searcher.search(query[None], K)
                ms.append((time.perf_counter() - started) * 1000)
            row.update(_percentiles(ms))
            out.append(row)
            print(f"  {row}", flush=True)
            if (row["recall_text"] >= target and row["recall_image"] >= target) or row["p50_ms"] > max_ms:
                break
    finally:
        faiss.omp_set_num_threads(threads)
    return out


def _percentiles(ms: list[float]) -> dict:
    values = np.array(ms)
    out = {"requests": len(values), **{f"p{q}_ms": round(float(np.percentile(values, q)), 2) for q in (50, 90, 99)}}
    out["mean_ms"] = round(float(values.mean()), 2)
    return out


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--model", default="ViT-B-32", help="its real weights fingerprint goes into the manifest")
    parser.add_argument("--budget", help="memory budget for the index (e.g. 2GB); default: none (selector's choice)")
    parser.add_argument("--key", help="build this faiss index_factory key instead of the selector's choice")
    parser.add_argument("--recall", type=float, default=0.95, help="recall@10 target the build tunes to")
    parser.add_argument("--rebuild", action="store_true", help="build the cached index again")
    parser.add_argument("--build-only", action="store_true", help="build (or check) the cached index and stop")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache/xmodal/bench")
    parser.add_argument("--queries", type=int, default=300, help="sequential text queries")
    parser.add_argument("--image-queries", type=int, default=100, help="sequential image queries")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients of the image-search QPS run")
    parser.add_argument("--qps-seconds", type=float, default=15)
    parser.add_argument("--images", type=int, default=20, help="the smallest JPEGs of --photos, used in turn")
    parser.add_argument("--photos", type=Path, default=HERE.parent.parent / "shared/data/coco-mini/images")
    parser.add_argument(
        "--app-root",
        type=Path,
        default=HERE.parent,
        help="the checkout whose app/ serves (e.g. a clean `git archive HEAD` export)",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra XMODAL_* settings for the server (repeatable)",
    )
    parser.add_argument("--target-p99-ms", type=float, default=25.0)
    parser.add_argument("--sweep-timed", type=int, default=100, help="text queries timed per in-process FAISS setting")
    parser.add_argument("--sweep-max-ms", type=float, default=150, help="stop the sweep past this p50 per query")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "latency.json")
    args = parser.parse_args()

    started = time.perf_counter()
    load_start = _load()
    folder = cache_folder(args.cache_dir, args.n, args.key, args.budget)
    record = build_or_reuse(folder, args.n, args.dim, args.model, args.key, args.budget, args.recall, args.rebuild)
    if args.build_only:
        return
    version = store.resolve_version(folder)
    manifest = store.read_manifest(version)
    fresh = np.load(folder / "fresh-queries.npy").astype(np.float32)
    texts = query_texts(args.queries + args.warmup)
    warm_texts, texts = texts[args.queries :], texts[: args.queries]
    photos = sorted(
        (p for p in args.photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg")), key=lambda p: p.stat().st_size
    )
    images = [(p.name, p.read_bytes()) for p in photos[: args.images]]
    # One client sends back to back: the default per-client rate limit (50/s) would answer 429.
    server_env = {
        "XMODAL_LOG_LEVEL": "warning",
        "XMODAL_OFFLINE": "1",
        "XMODAL_RATE_LIMIT_RPS": "0",
        **dict(item.split("=", 1) for item in args.server_env),
    }

    log_path = args.out.with_name(args.out.stem + "-server.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    phases = {}
    with Server(folder, log_path, server_env, app_root=args.app_root) as server:
        ready_s = server.wait_ready(timeout=900)
        print(f"server ready in {ready_s:.0f}s ({server.url}); {args.queries} text queries", flush=True)
        served_index = httpx.get(server.url + "/v1/index", timeout=10).json()
        phases["text_load_before"] = _load()
        text_rows = sequential_text(server.url, texts, warm_texts, fresh)
        phases["text_load_after"] = _load()
        print(f"{args.image_queries} image queries", flush=True)
        image_rows = sequential_images(server.url, images, args.image_queries, min(args.warmup, 5))
        phases["image_load_after"] = _load()
        print(f"image search, {args.clients} clients, {args.qps_seconds:.0f}s", flush=True)
        qps = asyncio.run(image_qps(server.url, images, args.clients, args.qps_seconds))
        phases["qps_load_after"] = _load()

    rows = {**text_rows, **image_rows}

    print("exact search for recall@10", flush=True)
    shards = manifest.images.embeddings
    truths = {
        "text": Truth(version, shards, np.array(rows["embed_text"].vectors, np.float32)),
        "image": Truth(version, shards, np.array(rows["embed_image"].vectors, np.float32)),
        "fresh": Truth(version, shards, fresh[[i % len(fresh) for i in range(len(rows["search_vector_fresh"].ids))]]),
    }
    truth_of = {
        "search_text": "text",
        "search_vector_text": "text",
        "search_vector_fresh": "fresh",
        "search_image": "image",
    }
    summary = {name: row.summary() for name, row in rows.items()}
    for name, truth in truth_of.items():
        summary[name].update(truths[truth].recall(rows[name].ids))
    same = [a == b for a, b in zip(rows["search_text"].ids, rows["search_vector_text"].ids)]

    print("in process: text encoding alone", flush=True)
    in_process = {"encode_text": encode_in_process(args.model, texts, warm_texts)}
    phases["encode_load_after"] = _load()
    print("in process: the result rows, and FAISS alone, one thread, up the search-parameter ladder", flush=True)
    opened = OpenIndex(folder)
    in_process["item_rows"] = item_rows_in_process(opened, rows["search_vector_fresh"].ids)
    sweep = faiss_sweep(opened, truths, args.sweep_timed, args.sweep_max_ms, 0.95)
    del opened
    phases["sweep_load_after"] = _load()

    hardware = f"{cpu_model()}, {os.cpu_count()} cores (server, client and other sessions' jobs)"
    e2e = summary["search_text"]
    result = {
        "goal": f"text -> image search over HTTP, one sequential client: p99 <= {args.target_p99_ms:g} ms at recall@10 >= 0.95",
        "met": bool(e2e.get("p99_ms", 1e9) <= args.target_p99_ms and e2e.get("recall_at_10", 0) >= 0.95),
        "model": f"{args.model} (open_clip architecture, seeded random weights; CPU fp32)",
        "fingerprint": manifest.model.fingerprint,
        "index": {
            "n": manifest.images.count,
            "dim": manifest.model.embed_dim,
            "key": manifest.images.index_key,
            "search_params": manifest.images.search_params,
            "build_recall_at_10": manifest.images.measured_recall_at_10,
            "build_query_ms": manifest.images.measured_query_ms,
            "bytes": manifest.images.index_bytes,
            "folder": str(folder),
            "version": version.name,
            "served": served_index,
            "build": record,
        },
        "data": "clustered synthetic 512-d unit vectors (common.clustered_vectors, seed 0, float16)",
        "queries": {
            "text": f"{len(texts)} distinct 2-6 word texts, k={K}, after {len(warm_texts)} warm-up queries",
            "image": f"{args.image_queries} JPEGs, the {len(images)} smallest of {args.photos} in turn "
            f"({min(len(d) for _, d in images) // 1000}-{max(len(d) for _, d in images) // 1000} kB, "
            f"~640x480), multipart, k={K}",
            "fresh": f"rows n..n+{FRESH} of the same mixture (in-distribution, never indexed)",
        },
        "server": {
            "app_root": str(args.app_root),
            "app_commit": _commit(args.app_root),
            "env": server_env,
            "ready_s": round(ready_s, 1),
            "log": str(log_path),
        },
        "hardware": hardware,
        "faiss": faiss.__version__,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average": {"start": load_start, **phases, "end": _load()},
        "rows": summary,
        "search_text_equals_vector_search": round(sum(same) / max(len(same), 1), 4),
        "query_embedding_mean_pairwise_cosine": {name: _pairwise_cosine(truths[name].queries) for name in truths},
        "image_search_qps": qps,
        "in_process": {**in_process, "faiss_one_thread": sweep},
        "total_s": round(time.perf_counter() - started, 1),
    }
    print_table(result, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


LABELS = {
    "healthz": "GET /healthz (HTTP floor)",
    "embed_text": "POST /v1/embed/text (encode)",
    "search_vector_text": "POST /v1/search/vector, text emb",
    "search_vector_fresh": "POST /v1/search/vector, fresh",
    "search_text": "POST /v1/search/text (end to end)",
    "embed_image": "POST /v1/embed/image (encode)",
    "search_image": "POST /v1/search/image (end to end)",
}


def print_table(result: dict, args) -> None:
    index, load = result["index"], result["load_average"]
    print(
        f"\n{result['model']}; {index['key']} {index['search_params']} over {index['n']:,} x {index['dim']} "
        f"({result['data']}); k={K}"
    )
    print(
        f"{result['hardware']}; faiss {result['faiss']}, OMP_WAIT_POLICY={result['omp_wait_policy']}; "
        f"load average (1 min) {load['start'][0]} at start, {load['text_load_after'][0]} after the text queries, "
        f"{load['sweep_load_after'][0]} after the sweep"
    )
    print(
        f"{'one sequential client (HTTP, keep-alive); in process: no server':<46}{'n':>5}{'p50':>7}{'p90':>7}"
        f"{'p99':>7}{'mean':>7}{'srv p50':>8}{'srv p99':>8}  recall@10"
    )

    def line(label: str, row: dict, recall: str) -> None:
        def cell(key: str) -> str:
            value = row.get(key)
            return f"{value:>7.1f}" if value is not None else f"{'-':>7}"

        print(
            f"{label:<46}{row['requests']:>5}{cell('p50_ms')}{cell('p90_ms')}{cell('p99_ms')}{cell('mean_ms')}"
            f" {cell('server_p50_ms')} {cell('server_p99_ms')}  {recall}"
        )

    for name, row in result["rows"].items():
        line(LABELS[name], row, f"{row['recall_at_10']:.3f}" if "recall_at_10" in row else "-")
    line("in process: encode_texts, one text", result["in_process"]["encode_text"], "-")
    line("in process: OpenIndex.item_rows, 10 ids", result["in_process"]["item_rows"], "-")
    for row in result["in_process"]["faiss_one_thread"]:
        label = f"in process: FAISS {row['params']}{' (served)' if row['served'] else ''}, 1 thr"
        line(
            label, row, f"text {row['recall_text']:.3f} image {row['recall_image']:.3f} fresh {row['recall_fresh']:.3f}"
        )
    qps = result["image_search_qps"]
    print(
        f"image search, {qps['clients']} concurrent clients, {qps['seconds']:.0f}s: {qps['qps']} QPS, "
        f"p50 {qps['p50_ms']} ms, p99 {qps['p99_ms']} ms, errors {qps['errors']}; "
        f"load average after {load['qps_load_after'][0]}"
    )
    e2e = result["rows"]["search_text"]
    print(
        f"goal p99 <= {args.target_p99_ms:g} ms at recall@10 >= 0.95: {'met' if result['met'] else 'NOT met'} "
        f"(p99 {e2e.get('p99_ms')} ms, recall@10 {e2e.get('recall_at_10')}); "
        f"text search = vector search for {result['search_text_equals_vector_search']:.0%} of queries; "
        f"total {result['total_s']:.0f}s"
    )


def _pairwise_cosine(vectors: np.ndarray) -> float | None:
    if len(vectors) < 2:
        return None
    gram = vectors @ vectors.T
    return round(float((gram.sum() - np.trace(gram)) / (len(vectors) * (len(vectors) - 1))), 4)


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _commit(root: Path) -> str | None:
    """HEAD of the checkout that served, with "+uncommitted app/" when its app/ differs (None: no git)."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "app"], capture_output=True, text=True
        )
    except OSError:
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+uncommitted app/" if dirty.stdout.strip() else "")


if __name__ == "__main__":
    main()
