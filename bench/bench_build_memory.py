"""Peak memory of `xmodal reindex` over 1M x 512 stored vectors: streamed build vs before (issue #5), one run.

    OMP_WAIT_POLICY=PASSIVE python bench/bench_build_memory.py [--n 1000000] [--dim 512]
        [--run 150MB --run 2.1GB ...] [--old-ref HEAD | --no-old] [--cache-dir ~/.cache/xmodal/bench]

Data (written once, cached in --cache-dir, e.g. ~/.cache/xmodal/bench/build-memory-1000000x512): n
clustered synthetic unit vectors (common.clustered_vectors, float16 as stored) in a version
written with store.VersionWriter's shard writer, with an items table like test_reindex's; its own
images.faiss is an empty Flat placeholder (every run replaces it).

Runs (--run, repeated; default 150MB and 2.1GB): a budget (`150MB`: the selector's choice for it, a PQ
index at 1M x 512), `none` (no budget: HNSW at 1M, 13 minutes of build here, so not a default), or
`key=FACTORY` (forced). `2.1GB` admits IVF-Flat but not HNSW (2.3 GB): the "no real budget" case within
the time this box has. Each run: the cached version hard-linked into a scratch index folder, then
indexer.reindex.reindex() in a fresh Python process (OMP_WAIT_POLICY=PASSIVE, faiss's default
threads), which reports:

    baseline    VmRSS after the imports, before reindex()
    peak RSS    VmHWM at the end: the kernel's high-water mark of the resident set (anonymous memory
                plus mapped file pages: libraries, and memory-mapped shards read through the mapping)
    peak anon   the highest RssAnon seen by a thread sampling /proc/self/status every 20 ms (a lower
                bound: a shorter spike can fall between samples); peak_file_sampled likewise, in the JSON
    seconds     reindex() alone (this box is shared: compare seconds only within one run)

Unless --no-old, the same runs also use the xmodal package (app/, indexer/, models/) of --old-ref (default HEAD: the code before
streaming, which read every shard into one float32 matrix; `git archive`, read-only) in the child
process. Each written index file's sha256 is recorded; "same file" compares it with the other code's
file for the same run. Prints one table and writes JSON (bench/results/build_memory.json) after every
run, keeping earlier rows of the same data that this invocation does not measure again.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before numpy/faiss load OpenMP: spinning threads on a shared box

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from xmodal.app.testing import package_path  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MIB = 2**20


# ---------------------------------------------------------------- the child: one reindex, measured


def _status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of this process, in bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[name] = int(value.split()[0]) * 1024
    return out


def child(spec: dict) -> dict:
    from xmodal import indexer
    from xmodal.indexer import store  # noqa: F401 - imported before the baseline, as reindex() needs it
    from xmodal.indexer.reindex import reindex

    peaks = {"RssAnon": 0, "RssFile": 0}
    done = threading.Event()

    def sample():
        while not done.wait(0.02):
            status = _status()
            for name in peaks:
                peaks[name] = max(peaks[name], status[name])

    baseline = _status()["VmRSS"]
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    report = reindex(spec["root"], spec["budget"], spec["recall"], key=spec["key"], keep=1)
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    status = _status()
    built = report.built["images"]
    return {
        "indexer": str(Path(indexer.__file__).parent),
        "seconds": round(seconds, 1),
        "baseline_rss": baseline,
        "peak_rss": status["VmHWM"],
        "peak_anon_sampled": max(peaks["RssAnon"], status["RssAnon"]),
        "peak_file_sampled": max(peaks["RssFile"], status["RssFile"]),
        "index_key": built.key,
        "search_params": built.search_params,
        "recall_at_10": built.measured_recall_at_10,
        "query_ms": built.measured_query_ms,
        "index_bytes": report.index_bytes["images"],
        "build_seconds": built.seconds,
        "version": str(report.version),
    }


# ---------------------------------------------------------------- the parent: data, runs, table


def ensure_data(folder: Path, n: int, dim: int) -> Path:
    """The cached synthetic version (written when missing or for other n/dim); its version folder."""
    import faiss
    import pyarrow as pa
    from common import clustered_vectors

    from xmodal.indexer import store
    from xmodal.indexer.manifest import Manifest, ModelInfo, VectorIndexInfo

    wanted = {"n": n, "dim": dim, "data_seed": 0, "generator": "common.clustered_vectors"}
    record = folder / "bench.json"
    if record.is_file() and json.loads(record.read_text()) == wanted:
        try:
            return store.resolve_version(folder)
        except store.IndexNotFound:
            pass
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.perf_counter()
    vectors = clustered_vectors(n, dim)
    writer = store.VersionWriter(folder)
    try:
        shards = writer.shard_writer("images", dim)
        shards.add(vectors)
        names = shards.close()
        del vectors
        writer.write_index("images", faiss.index_factory(dim, "Flat", faiss.METRIC_INNER_PRODUCT))  # placeholder
        ids = pa.array(range(n), pa.int64())
        paths = pa.array([f"{i}.png" for i in range(n)])
        writer.write_table("items", pa.table({"id": ids, "path": paths, "location": paths}))
        nothing = pa.array([], pa.string())
        writer.write_table("skipped", pa.table({"path": nothing, "reason": nothing}))
        manifest = Manifest(
            xmodal_version="bench",
            model=ModelInfo(spec="synthetic", fingerprint="0" * 64, embed_dim=dim),
            source=str(folder / "no-images"),
            images=VectorIndexInfo(file="images.faiss", embeddings=names, count=n, index_key="Flat"),
        )
        version = writer.publish(manifest, keep=1)
    except BaseException:
        writer.abort()
        raise
    record.write_text(json.dumps(wanted))
    print(f"wrote {n:,} x {dim} vectors to {version} in {time.perf_counter() - started:.0f}s", flush=True)
    return version


def scratch_copy(version: Path, root: Path) -> Path:
    """An index folder holding `version` (hard links: no data copied) as its CURRENT."""
    shutil.rmtree(root, ignore_errors=True)
    target = root / version.name
    target.mkdir(parents=True)
    for path in version.iterdir():
        os.link(path, target / path.name)
    (root / "CURRENT").write_text(version.name + "\n")
    return root


def parse_run(text: str) -> dict:
    from xmodal.indexer.selection import parse_bytes

    if text.startswith("key="):
        return {"label": text, "budget": None, "key": text[4:]}
    if text == "none":
        return {"label": "none", "budget": None, "key": None}
    return {"label": text, "budget": parse_bytes(text), "key": None}


def run_child(spec: dict, timeout: float) -> dict:
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    if spec["code"]:  # the old commit's xmodal package, first on the child's path
        env["PYTHONPATH"] = spec["code"]
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    if result.returncode != 0:
        raise RuntimeError(f"child failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(16 * MIB), b""):
            digest.update(chunk)
    return digest.hexdigest()


def old_code(ref: str, folder: Path) -> Path:
    """A PYTHONPATH folder whose `xmodal` package is `ref`'s app/, indexer/ and models/, extracted
    (read-only git: nothing in the checkout changes)."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref, "app", "indexer", "models"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return package_path(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--recall", type=float, default=0.95)
    parser.add_argument("--run", action="append", help="a budget, `none` or key=FACTORY (repeat for more runs)")
    parser.add_argument("--old-ref", default="HEAD", help="git commit whose indexer/ is the 'before' (default HEAD)")
    parser.add_argument("--no-old", action="store_true", help="measure this checkout only")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "xmodal" / "bench")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one run may take")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "build_memory.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    started = time.perf_counter()
    folder = args.cache_dir / f"build-memory-{args.n}x{args.dim}"
    version = ensure_data(folder, args.n, args.dim)
    vectors_f32 = args.n * args.dim * 4
    from common import cpu_model

    hardware = f"{platform.machine()}, {os.cpu_count()} cores, {cpu_model()}"
    result = {
        "data": (
            f"{args.n:,} x {args.dim} clustered synthetic unit vectors (common.clustered_vectors), float16 shards"
        ),
        "n": args.n,
        "dim": args.dim,
        "recall_target": args.recall,
        "hardware": hardware,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "head": _git("rev-parse", "--short", "HEAD"),
        "float32_matrix_bytes": vectors_f32,
        "rows": [],
    }
    if args.out.is_file():  # rows of earlier runs on the same data stay, unless this run measures them again
        earlier = json.loads(args.out.read_text())
        if (earlier.get("n"), earlier.get("dim"), earlier.get("recall_target")) == (args.n, args.dim, args.recall):
            result["rows"] = earlier.get("rows", [])
            result.setdefault("old_commit", earlier.get("old_commit"))
    with tempfile.TemporaryDirectory(prefix="old-indexer-") as tmp:
        implementations = [("streamed", None)]
        if not args.no_old:
            old = old_code(args.old_ref, Path(tmp))
            implementations.append((f"before ({args.old_ref})", str(old)))
            result["old_commit"] = _git("rev-parse", "--short", args.old_ref)
        for text in args.run or ["150MB", "2.1GB"]:
            run = parse_run(text.strip())
            for name, code in implementations:
                root = scratch_copy(version, folder / "scratch")
                spec = {
                    "root": str(root),
                    "budget": run["budget"],
                    "recall": args.recall,
                    "key": run["key"],
                    "code": code,
                }
                print(f"{run['label']}: {name} ...", flush=True)
                try:
                    row = run_child(spec, args.timeout)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    print(f"  failed: {exc}", flush=True)
                    row = {"error": str(exc)[-500:]}
                else:
                    row["index_sha256"] = sha256(Path(row["version"]) / "images.faiss")
                    row["old_floor_bytes"] = vectors_f32 + row["index_bytes"]  # float32 matrix + index: held at once
                row = {"run": run["label"], "code": name, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **row}
                print(f"  {json.dumps(row)}", flush=True)
                result["rows"] = [r for r in result["rows"] if (r["run"], r["code"]) != (row["run"], row["code"])]
                result["rows"].append(row)
                shutil.rmtree(root, ignore_errors=True)
                result["total_s"] = round(time.perf_counter() - started, 1)
                result["load_average_at_end"] = os.getloadavg()
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{result['data']}\n{hardware}; float32 matrix of all rows: {vectors_f32 / MIB:,.0f} MiB")
    header = (
        f"{'run':<18}{'code':<18}{'index':<26}{'params':<22}{'R@10':>6}{'index MiB':>10}{'base MiB':>9}"
        f"{'peak RSS MiB':>13}{'peak anon':>10}{'seconds':>8}{'same file':>10}"
    )
    print(header)
    for row in result["rows"]:
        if "error" in row:
            print(f"{row['run']:<18}{row['code']:<18}failed")
            continue
        others = {r.get("index_sha256") for r in result["rows"] if r["run"] == row["run"] and r is not row} - {None}
        same = "" if not others else "yes" if others == {row["index_sha256"]} else "NO"
        print(
            f"{row['run']:<18}{row['code']:<18}{row['index_key']:<26}{row['search_params'] or '-':<22}"
            f"{row['recall_at_10'] or 1.0:>6.3f}{row['index_bytes'] / MIB:>10,.0f}{row['baseline_rss'] / MIB:>9,.0f}"
            f"{row['peak_rss'] / MIB:>13,.0f}{row['peak_anon_sampled'] / MIB:>10,.0f}{row['seconds']:>8.0f}"
            f"{same:>10}"
        )
    print(f"total {result['total_s']:.0f}s; JSON: {args.out}")


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    main()
