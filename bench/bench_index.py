"""Index build speed: `xmodal index`'s pipeline against a plain sequential loop, same run.

    python bench/bench_index.py [--data ../shared/data/flickr8k-1k/images] [--model ViT-B-32] [--limit N]

Both sides decode, preprocess and embed the same files with the same model and batch size; the
baseline does it in one process, one step after another (what a first script would do), xmodal
overlaps decoding in worker processes with model compute. Prints one table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from xmodal.indexer.build import BuildConfig, build_index, default_workers
from xmodal.indexer.sources import open_source
from xmodal.models.encoders import Encoder
from xmodal.models.images import ImageError, load_image

HERE = Path(__file__).resolve().parent


def sequential_baseline(encoder: Encoder, paths: list[Path], batch_size: int) -> float:
    """Decode + preprocess + encode one batch at a time in this process; returns seconds."""
    started = time.perf_counter()
    batch = []
    for path in paths:
        try:
            batch.append(encoder.preprocess_image(load_image(path)))
        except ImageError:
            continue
        if len(batch) == batch_size:
            encoder.encode_images(torch.stack(batch))
            batch = []
    if batch:
        encoder.encode_images(torch.stack(batch))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared/data/flickr8k-1k/images")
    parser.add_argument("--model", default="ViT-B-32", help="model spec (bare name = random weights)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--limit", type=int, default=0, help="only the first N images (0 = all)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "index.json")
    args = parser.parse_args()

    paths = [Path(record.location) for record in open_source(args.data).records]
    paths = paths[: args.limit] if args.limit else paths
    encoder = Encoder.from_spec(args.model, args.device)
    encoder.encode_images(torch.zeros(2, 3, *encoder.loaded.preprocess_cfg["size"]))  # warm-up

    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp) / "images"
        subset.mkdir()
        for path in paths:  # links, so both sides read exactly the same files
            (subset / path.name).symlink_to(path)
        baseline_s = sequential_baseline(encoder, paths, args.batch_size)
        config = BuildConfig(
            subset,
            Path(tmp) / "index",
            model=args.model,
            batch_size=args.batch_size,
            workers=args.workers,
            progress=False,
        )
        report = build_index(config, encoder)

    hardware = (
        torch.cuda.get_device_name()
        if encoder.device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    )
    result = {
        "data": str(args.data),
        "images": len(paths),
        "model": args.model,
        "batch_size": args.batch_size,
        "input_size": list(encoder.loaded.preprocess_cfg["size"]),
        "device": str(encoder.device),
        "hardware": hardware,
        "torch_threads": torch.get_num_threads(),
        "workers": args.workers,
        "baseline_images_per_s": round(len(paths) / baseline_s, 2),
        "xmodal_embed_images_per_s": round(report.images_per_s, 2),
        "xmodal_total_s": round(report.seconds, 2),
        "xmodal_total_images_per_s": round(len(paths) / report.seconds, 2),
    }
    result["speedup_embed"] = round(result["xmodal_embed_images_per_s"] / result["baseline_images_per_s"], 2)

    print(
        f"index build: {result['images']} images from {args.data}, {args.model}, batch {args.batch_size}, "
        f"input {result['input_size']}, {result['device']} ({hardware}), {result['torch_threads']} torch threads"
    )
    print(f"{'pipeline':<40}{'images/s':>10}")
    print(f"{'sequential loop (baseline)':<40}{result['baseline_images_per_s']:>10.1f}")
    print(f"{f'xmodal index, {args.workers} decode workers':<40}{result['xmodal_embed_images_per_s']:>10.1f}")
    print(f"{'xmodal index incl. load+write':<40}{result['xmodal_total_images_per_s']:>10.1f}")
    print(f"{'speedup (embed stage)':<40}{result['speedup_embed']:>10.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
