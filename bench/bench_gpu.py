"""GPU figures (issue #14): images/s through the whole indexer, model-only encode per precision, text
queries/s, caption latency at batch 1 and captions/s batched. One table; JSON to --out.

    python bench/bench_gpu.py [--device cuda] [--images 2000] [--out bench/results/gpu.json]
    python bench/bench_gpu.py --small       # CPU, tiny models, a few small JPEGs (tests/unit/bench runs it)

Pipeline: --images distinct photo-like JPEGs (1600x1200, ~250 KB, like camera uploads) are written to a temp
folder and indexed by indexer.build.build_index, the code `xmodal index` runs: read + sha256, decode,
preprocess, encode, journal, FAISS, publish. Once with the DataLoader workers decoding (Pillow, draft
scaling) and once with the batched decoder on the model's device (nvJPEG on CUDA, models.device_images);
images/s is over the embedding phase (BuildReport.embed_seconds; FAISS and publishing are timed apart),
and the two versions' stored vectors are compared (cosine). Random weights: speed does not depend on
their values, and nothing is downloaded. Every figure is one run on the hardware named in the table.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the xmodal command does

import argparse  # noqa: E402
import functools  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from xmodal.indexer import store  # noqa: E402
from xmodal.indexer.build import BuildConfig, build_index, default_workers  # noqa: E402
from xmodal.indexer.reader import OpenIndex  # noqa: E402
from xmodal.models.decoding import DecodeOptions  # noqa: E402
from xmodal.models.encoders import Encoder  # noqa: E402
from xmodal.models.generation import Captioner  # noqa: E402
from xmodal.models.images import load_image  # noqa: E402
from xmodal.models.precision import precision_name  # noqa: E402

HERE = Path(__file__).resolve().parent
QUERIES = ["a dog on a beach", "two people riding bikes", "a red bus", "pizza on a plate", "snowy mountains at sunset"]
FULL = {
    "model": "ViT-B-32",
    "caption_model": "coca_ViT-B-32",
    "images": 2000,
    "size": (1600, 1200),
    "batch_size": 256,
    "text_batch": 1024,
    "text_queries": 200,
    "caption_batch": 64,
    "tokens": 20,
    "repeats": 5,
}
SMALL = {
    "model": "xmodal-tiny-clip",
    "caption_model": "xmodal-tiny-coca",
    "images": 24,
    "size": (160, 120),
    "batch_size": 8,
    "text_batch": 16,
    "text_queries": 10,
    "caption_batch": 4,
    "tokens": 4,
    "repeats": 2,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="tiny models and a few small JPEGs (CPU, seconds)")
    parser.add_argument(
        "--images", type=int, help=f"JPEGs to index (default {FULL['images']}, small {SMALL['images']})"
    )
    parser.add_argument("--batch-size", type=int, help=f"images per model batch (default {FULL['batch_size']})")
    parser.add_argument("--workers", type=int, help="DataLoader decode workers (default: xmodal index's, small 0)")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "fp16", "bf16"], help="model-only encode rows")
    parser.add_argument("--skip-captions", action="store_true", help="leave out the caption rows")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "gpu.json")
    args = parser.parse_args(argv)
    sizes = dict(SMALL if args.small else FULL)
    sizes["images"] = args.images or sizes["images"]
    sizes["batch_size"] = args.batch_size or sizes["batch_size"]
    sizes["workers"] = (0 if args.small else default_workers()) if args.workers is None else args.workers
    args.sizes = sizes
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    sizes, device = args.sizes, torch.device(args.device)
    torch.manual_seed(0)
    result: dict = {"hardware": hardware(device), "device": str(device), "sizes": sizes, "rows": []}
    rows = result["rows"]
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        folder = Path(tmp) / "photos"
        result["jpeg_bytes_mean"] = write_jpegs(folder, sizes["images"], sizes["size"])
        encoder = Encoder.from_spec(sizes["model"], str(device))  # auto precision: fp16 on CUDA, fp32 on the CPU
        rows += pipeline_rows(encoder, folder, Path(tmp), sizes)
        rows += precision_rows(sizes["model"], device, folder, sizes, args.precisions)
        rows += text_rows(encoder, sizes)
        if not args.skip_captions:
            rows += caption_rows(sizes["caption_model"], device, folder, sizes)
    result["load_average"] = round(os.getloadavg()[0], 2)
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return result


def write_jpegs(folder: Path, count: int, size: tuple[int, int], bases: int = 16) -> int:
    """`count` distinct JPEGs: `bases` photo-like pictures (smooth colour fields with sensor-like noise, about
    250 KB at 1600x1200), each file made unique by a comment segment so that none is a duplicate (sha256)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    width, height = size
    encoded = []
    for _ in range(bases):
        field = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).resize(
            size, Image.Resampling.BICUBIC
        )
        noisy = np.asarray(field).astype(np.int16) + rng.normal(0, 4, (height, width, 3)).astype(np.int16)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=85)
        encoded.append(buffer.getvalue())
    total = 0
    for i in range(count):
        comment = f"bench-gpu {i}".encode()
        data = encoded[i % bases]
        data = data[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + data[2:]  # after SOI
        (folder / f"{i:06d}.jpg").write_bytes(data)
        total += len(data)
    return total // count


def pipeline_rows(encoder: Encoder, folder: Path, tmp: Path, sizes: dict) -> list[dict]:
    """The indexer end to end, workers decoding vs the device decoder, plus the cosine between the two."""
    rows, vectors = [], {}
    for gpu_decode in (False, True):
        config = BuildConfig(
            folder,
            tmp / f"index-{gpu_decode}",
            model=encoder.spec,
            batch_size=sizes["batch_size"],
            workers=sizes["workers"],
            device=str(encoder.device),
            progress=False,
            gpu_decode=gpu_decode,
        )
        warm_up(encoder, config)
        started = time.perf_counter()
        report = build_index(config, encoder)
        total = time.perf_counter() - started
        index = OpenIndex(report.version)
        vectors[gpu_decode] = store.read_vectors(index.version, index.manifest.images.embeddings).astype(np.float32)
        rows.append(
            {
                "part": "pipeline",
                "what": f"index {report.indexed} JPEGs {'x'.join(map(str, sizes['size']))}, "
                + ("device decode" if gpu_decode else f"{config.workers} decode workers"),
                "model": encoder.spec,
                "precision": precision_name(encoder.loaded.dtype),
                "batch": sizes["batch_size"],
                "per_s": round(report.images_per_s, 1),
                "unit": "images/s",
                "embed_s": round(report.embed_seconds, 2),
                "total_s": round(total, 2),
            }
        )
    cosine = (vectors[False] * vectors[True]).sum(axis=1)
    rows[-1]["cosine_min_vs_workers"] = round(float(cosine.min()), 6)
    return rows


def warm_up(encoder: Encoder, config: BuildConfig) -> None:
    """One batch through the same path first (CUDA kernels, nvJPEG handles), in a throwaway folder."""
    warm = config.out.with_name(config.out.name + "-warm")
    files = sorted(config.source.iterdir())[: config.batch_size]
    (warm / "photos").mkdir(parents=True)
    for path in files:
        (warm / "photos" / path.name).symlink_to(path)
    build_index(BuildConfig(warm / "photos", warm / "index", **_same(config)), encoder)


def _same(config: BuildConfig) -> dict:
    keep = ("model", "batch_size", "device", "progress", "gpu_decode")
    return {name: getattr(config, name) for name in keep} | {"workers": 0}


def precision_rows(spec: str, device: torch.device, folder: Path, sizes: dict, precisions: list[str]) -> list[dict]:
    """Model-only image encoding per precision (a preprocessed batch already on the device), and the worst
    cosine to fp32 over real preprocessed pictures."""
    rows, reference = [], None
    for precision in precisions:
        encoder = Encoder.from_spec(spec, str(device), precision=precision)
        pixels = _pixels(encoder, folder, sizes["batch_size"]).to(device)
        seconds = timed(functools.partial(encoder.encode_images, pixels), device, sizes["repeats"])
        vectors = encoder.encode_images(pixels)
        reference = vectors if reference is None else reference
        rows.append(
            {
                "part": "encode",
                "what": "image encode, model only",
                "model": spec,
                "precision": precision,
                "batch": len(pixels),
                "per_s": round(len(pixels) / seconds, 1),
                "unit": "images/s",
                "cosine_min_vs_first": round(float((vectors * reference).sum(axis=1).min()), 6),
            }
        )
    return rows


def _pixels(encoder: Encoder, folder: Path, batch: int) -> torch.Tensor:
    paths = sorted(folder.iterdir())[:batch]
    images = [encoder.preprocess_image(load_image(path)) for path in paths[:16]]
    return torch.stack([images[i % len(images)] for i in range(len(paths))])


def text_rows(encoder: Encoder, sizes: dict) -> list[dict]:
    """Queries one at a time (what a search request costs) and a large batch (texts/s)."""
    device = encoder.device
    queries = [QUERIES[i % len(QUERIES)] + f" {i}" for i in range(sizes["text_queries"])]
    encoder.encode_texts(queries[:1])
    started = time.perf_counter()
    latencies = []
    for query in queries:
        began = time.perf_counter()
        encoder.encode_texts([query])  # returns host numpy: synchronised
        latencies.append(time.perf_counter() - began)
    one_by_one = len(queries) / (time.perf_counter() - started)
    batch = [QUERIES[i % len(QUERIES)] + f" {i}" for i in range(sizes["text_batch"])]
    seconds = timed(lambda: encoder.encode_texts(batch), device, sizes["repeats"])
    common = {
        "part": "text",
        "model": encoder.spec,
        "precision": precision_name(encoder.loaded.dtype),
        "unit": "texts/s",
    }
    return [
        {
            **common,
            "what": "text queries one at a time",
            "batch": 1,
            "per_s": round(one_by_one, 1),
            "p50_ms": round(statistics.median(latencies) * 1000, 2),
        },
        {**common, "what": "text encode, batched", "batch": len(batch), "per_s": round(len(batch) / seconds, 1)},
    ]


def caption_rows(spec: str, device: torch.device, folder: Path, sizes: dict) -> list[dict]:
    """Cached greedy captions of exactly --tokens tokens (random weights: min = max new tokens), through the
    server's Captioner; times include the image encoder."""
    encoder = Encoder.from_spec(spec, str(device))
    captioner = Captioner(encoder)
    options = DecodeOptions(max_new_tokens=sizes["tokens"], min_new_tokens=sizes["tokens"])
    pixels = _pixels(encoder, folder, sizes["caption_batch"]).to(device)
    rows = []
    for batch in (1, len(pixels)):
        seconds = timed(lambda: captioner.caption(pixels[:batch], options), device, sizes["repeats"])
        rows.append(
            {
                "part": "caption",
                "what": f"captions of {sizes['tokens']} tokens, cached greedy",
                "model": spec,
                "precision": precision_name(encoder.loaded.dtype),
                "batch": batch,
                "per_s": round(batch / seconds, 1),
                "unit": "captions/s",
                "latency_ms": round(seconds * 1000, 1),
            }
        )
    return rows


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of `fn` after one warm-up, the device synchronised around each run."""
    fn()
    seconds = []
    for _ in range(repeats):
        _synchronize(device)
        started = time.perf_counter()
        fn()
        _synchronize(device)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hardware(device: torch.device) -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    host = f"{cores} cores, torch {torch.__version__}"
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, {host}"
    name = platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            name = line.split(":", 1)[1].strip()
            break
    return f"{name} (CPU), {host}, {torch.get_num_threads()} torch threads"


def print_table(result: dict) -> None:
    print(f"bench_gpu on {result['hardware']}, load average {result['load_average']}, random weights")
    print(f"JPEGs of {result['jpeg_bytes_mean'] / 1000:.0f} KB on average")
    print(f"{'part':<10}{'what':<52}{'model':<18}{'prec':<6}{'batch':>6}{'per s':>11}  {'unit':<11}{'extra'}")
    for row in result["rows"]:
        known = ("part", "what", "model", "precision", "batch", "per_s", "unit")
        extra = ", ".join(f"{k} {v}" for k, v in row.items() if k not in known)
        print(
            f"{row['part']:<10}{row['what']:<52}{row['model']:<18}{row['precision']:<6}{row['batch']:>6}"
            f"{row['per_s']:>11,.1f}  {row['unit']:<11}{extra}"
        )


if __name__ == "__main__":
    main()
