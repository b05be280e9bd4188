"""Caption latency: cached greedy decoding against the full-forward reference.

Random weights (no download), so every caption is forced to exactly --tokens new tokens
(min_new_tokens = max_new_tokens) and both paths do the same work. Times include the
image encoder, which both paths share. Prints one table and writes JSON.

    .venv/bin/python bench/bench_caption.py --batch-sizes 1 8 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import open_clip
import torch
from torch import nn

from models.decoding import CocaDecoder, DecodeOptions

DEFAULT_OUTPUT = Path(__file__).parent / "results" / "caption.json"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="coca_ViT-B-32", help="open_clip CoCa config name")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, default=20, help="new tokens per caption")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per setting, after one warm-up")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    return parser.parse_args(argv)


def build_decoder(model_name: str, device: torch.device, dtype: torch.dtype) -> CocaDecoder:
    torch.manual_seed(0)
    model = open_clip.create_model(model_name)
    with torch.no_grad():
        # open_clip leaves the decoder's vocabulary projection uninitialised (torch.empty).
        projection = model.text_decoder.text_projection
        nn.init.normal_(projection, std=projection.shape[0] ** -0.5)
    return CocaDecoder(model.to(device=device, dtype=dtype), open_clip.get_tokenizer(model_name))


def time_generate(
    decoder: CocaDecoder, images: torch.Tensor, options: DecodeOptions, use_cache: bool, repeats: int
) -> tuple[float, list[tuple[int, ...]]]:
    """Median seconds per batch after one warm-up run, and the tokens generated."""
    candidates = decoder.generate(images, options, use_cache=use_cache)
    seconds = []
    for _ in range(repeats):
        _synchronize(images.device)
        start = time.perf_counter()
        candidates = decoder.generate(images, options, use_cache=use_cache)
        _synchronize(images.device)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), [per_image[0].token_ids for per_image in candidates]


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {torch.get_num_threads()} torch threads"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(decoder: CocaDecoder, args: argparse.Namespace, host: str) -> list[dict]:
    """Cached and reference rows for each batch size; speedup is reference time / row time."""
    input_size = decoder.model.visual.image_size[0]
    options = DecodeOptions(max_new_tokens=args.tokens, min_new_tokens=args.tokens)
    rows = []
    for batch in args.batch_sizes:
        images = torch.randn(batch, 3, input_size, input_size, generator=torch.Generator().manual_seed(batch))
        images = images.to(decoder.device)
        cached_s, cached_tokens = time_generate(decoder, images, options, use_cache=True, repeats=args.repeats)
        reference_s, reference_tokens = time_generate(decoder, images, options, use_cache=False, repeats=args.repeats)
        for decoding, seconds in (("cached greedy", cached_s), ("reference greedy", reference_s)):
            rows.append(
                {
                    "model": args.model,
                    "decoding": decoding,
                    "batch": batch,
                    "input_size": input_size,
                    "new_tokens": args.tokens,
                    "dtype": args.dtype,
                    "hardware": host,
                    "ms_per_caption": 1000 * seconds / batch,
                    "captions_per_s": batch / seconds,
                    "speedup_vs_reference": reference_s / seconds,
                    "same_tokens_as_reference": cached_tokens == reference_tokens,
                }
            )
    return rows


def print_table(rows: list[dict], summary: str) -> None:
    print(summary)
    print(
        f"{'model':<14} {'decoding':<17} {'batch':>5} {'input':>5} "
        f"{'ms/caption':>10} {'captions/s':>10} {'speedup':>7} {'same':>5}"
    )
    for row in rows:
        print(
            f"{row['model']:<14} {row['decoding']:<17} {row['batch']:>5} {row['input_size']:>5} "
            f"{row['ms_per_caption']:>10.1f} {row['captions_per_s']:>10.2f} "
            f"{row['speedup_vs_reference']:>6.2f}x {str(row['same_tokens_as_reference']):>5}"
        )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    auto_device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto_device if args.device == "auto" else args.device)
    decoder = build_decoder(args.model, device, DTYPES[args.dtype])
    host = hardware(device)

    load_before = os.getloadavg()[0]  # the CPU may be shared; a busy host slows every row
    rows = measure(decoder, args, host)
    load = {"before": load_before, "after": os.getloadavg()[0]}
    print_table(
        rows,
        f"hardware: {host}; torch {torch.__version__}; open_clip {open_clip.__version__}; {args.dtype}; "
        f"{args.tokens} new tokens; median of {args.repeats} after 1 warm-up; "
        f"1-min load average {load['before']:.1f} -> {load['after']:.1f} on {os.cpu_count()} CPUs",
    )

    report = {
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "load_average_1m": load,
        "results": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
