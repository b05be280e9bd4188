"""JPEG draft decoding: speed per core and its effect on embeddings, against a full decode, same run.

    python bench/bench_decode.py [--model ViT-B-32] [--photos DIR] [--limit 48]

Each photo is decoded fully (the baseline) and with `load_image(draft_size=...)` at the model's
input size; both go through the same model. Prints one table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from xmodal.models.encoders import Encoder
from xmodal.models.images import load_image

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32", help="model spec (bare name = random weights)")
    parser.add_argument("--photos", type=Path, default=SHARED / "coco-mini" / "images")
    parser.add_argument("--limit", type=int, default=48)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "decode.json")
    args = parser.parse_args()

    paths = sorted(args.photos.glob("*.jpg"))[: args.limit] + [SHARED / "images-edge" / "rommel.jpg"]
    encoder = Encoder.from_spec(args.model, "cpu")
    size = min(encoder.loaded.preprocess_cfg["size"])

    def decode(draft_size):
        started = time.perf_counter()
        images = [load_image(p, draft_size=draft_size) for p in paths]
        return images, (time.perf_counter() - started) / len(paths)

    full_images, full_s = decode(None)
    draft_images, draft_s = decode(size)
    cosine = (encoder.embed_images(full_images) * encoder.embed_images(draft_images)).sum(axis=1)
    result = {
        "model": args.model,
        "input_size": size,
        "photos": len(paths),
        "source": str(args.photos),
        "hardware": f"{platform.machine()}, 1 process",
        "full_ms_per_image": round(full_s * 1000, 2),
        "draft_ms_per_image": round(draft_s * 1000, 2),
        "speedup": round(full_s / draft_s, 2),
        "cosine_min": round(float(cosine.min()), 6),
        "cosine_mean": round(float(cosine.mean()), 6),
    }
    print(f"JPEG decode, {len(paths)} photos from {args.photos} (+ a 3072x2304 camera JPEG), {args.model} at {size}px")
    print(f"{'decode':<24}{'ms/image':>10}{'cos min':>10}{'cos mean':>10}")
    print(f"{'full (baseline)':<24}{result['full_ms_per_image']:>10.2f}{1:>10.5f}{1:>10.5f}")
    print(
        f"{'draft to 2x input':<24}{result['draft_ms_per_image']:>10.2f}{result['cosine_min']:>10.5f}{result['cosine_mean']:>10.5f}"
    )
    print(f"speedup {result['speedup']:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
