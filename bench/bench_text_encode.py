"""Text encoding cut after the batch's longest text, against the full 77-position context, same run.

    python bench/bench_text_encode.py [--models ViT-B-32 coca_ViT-B-32] [--batches 1 32] [--repeats 5]

For each model and batch size, the same short queries (2-6 words) go through `Encoder.encode_texts`
(which cuts the padding: models/encoders.py) and through open_clip's `encode_text` on the full
context (the baseline); timings alternate so load on the machine hits both alike. Prints one table
(median ms per batch, ratio, worst cosine between the two), writes JSON.

The third column is the cut encoding with int8 weight copies of the text tower (XMODAL_TEXT_INT8,
Encoder(int8_text=True)), timed in the same alternation; its cosine is against the fp32 baseline.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the xmodal command does

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from xmodal.models.encoders import Encoder, can_trim_padding  # noqa: E402

HERE = Path(__file__).resolve().parent
QUERIES = [
    "a dog on a beach",
    "two people riding bikes",
    "a red bus",
    "pizza on a plate",
    "a cat asleep on a sofa",
    "snowy mountains at sunset",
    "a man surfing a big wave",
    "kitchen",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models", nargs="+", default=["ViT-B-32", "coca_ViT-B-32"], help="model specs (bare name = random weights)"
    )
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "text_encode.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for spec in args.models:
        encoder = Encoder.from_spec(spec, "cpu")
        int8 = Encoder(encoder.loaded, int8_text=True)
        for batch in args.batches:
            texts = [QUERIES[i % len(QUERIES)] for i in range(batch)]
            tokens = encoder.tokenize(texts)

            def full():
                with torch.inference_mode():
                    return F.normalize(encoder.model.encode_text(tokens).float(), dim=-1).numpy()

            def cut():
                return encoder.encode_texts(texts)

            def cut_int8():
                return int8.encode_texts(texts)

            cut(), full(), cut_int8()  # warm-up
            cut_ms, full_ms, int8_ms = [], [], []
            for _ in range(args.repeats):  # alternate, so load on the machine hits all alike
                for fn, times in ((cut, cut_ms), (full, full_ms), (cut_int8, int8_ms)):
                    started = time.perf_counter()
                    fn()
                    times.append((time.perf_counter() - started) * 1000)
            reference = full()
            cosine = float((cut() * reference).sum(axis=1).min())
            int8_cosine = float((cut_int8() * reference).sum(axis=1).min())
            rows.append(
                {
                    "model": spec,
                    "batch": batch,
                    "positions_kept": int((tokens != 0).any(0).nonzero().max()) + 1,
                    "context": tokens.shape[1],
                    "cut": can_trim_padding(encoder.model, encoder.loaded.tokenizer),
                    "full_ms": round(statistics.median(full_ms), 2),
                    "cut_ms": round(statistics.median(cut_ms), 2),
                    "speedup": round(statistics.median(full_ms) / statistics.median(cut_ms), 2),
                    "cosine_min": round(cosine, 6),
                    "int8_ms": round(statistics.median(int8_ms), 2),
                    "int8_speedup": round(statistics.median(full_ms) / statistics.median(int8_ms), 2),
                    "int8_vs_cut": round(statistics.median(cut_ms) / statistics.median(int8_ms), 2),
                    "int8_cosine_min": round(int8_cosine, 6),
                }
            )
    load = os.getloadavg()[0]
    print(
        f"text encoding, CPU {platform.machine()}, {args.threads} thread(s), load average {load:.1f}, "
        f"queries of 2-6 words, random weights"
    )
    print(
        f"{'model':<16}{'batch':>6}{'kept/ctx':>10}{'full ms':>10}{'cut ms':>10}{'speedup':>9}{'cos min':>10}"
        f"{'int8 ms':>10}{'vs full':>9}{'vs cut':>8}{'int8 cos':>10}"
    )
    for r in rows:
        print(
            f"{r['model']:<16}{r['batch']:>6}{r['positions_kept']:>5}/{r['context']:<4}{r['full_ms']:>10.1f}"
            f"{r['cut_ms']:>10.1f}{r['speedup']:>8.2f}x{r['cosine_min']:>10.6f}"
            f"{r['int8_ms']:>10.1f}{r['int8_speedup']:>8.2f}x{r['int8_vs_cut']:>7.2f}x{r['int8_cosine_min']:>10.6f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "hardware": f"{platform.machine()}, {os.cpu_count()} cores",
                "threads": args.threads,
                "load_average": round(load, 2),
                "rows": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
