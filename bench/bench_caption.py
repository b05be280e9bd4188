"""Caption latency: cached greedy decoding against the full-forward reference.

Random weights (no download), so every caption is forced to exactly --tokens new tokens
(min_new_tokens = max_new_tokens) and both paths do the same work. Times include the
image encoder, which both paths share. Prints one table and writes JSON.

--int8 adds cached greedy decoding with int8 weight copies (CocaDecoder(int8=True), CPU) and
how far it moves from fp32 cached decoding on the same images: identical sequences, top-1
agreement when both are fed the fp32 sequence (teacher forcing), and the mean change in the
log-probability of the fp32 tokens. Random weights give flat next-token distributions, so
these agreement numbers are a pessimistic proxy for trained weights.

At batch 1 a cached step is a chain of matrix-vector products, so its floor is the bytes of
weight it reads divided by memory bandwidth. The bench measures that bandwidth (a large
matrix-vector product in the model's dtype) and prints the floor for fp32 and int8 weights next
to the timings: when the cached row sits near its floor, only fewer bytes per step go faster.

    .venv/bin/python bench/bench_caption.py --batch-sizes 1 8 --repeats 2 [--int8]
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

from xmodal.models.decoding import CocaDecoder, DecodeOptions
from xmodal.models.registry import register_configs

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
    parser.add_argument("--int8", action="store_true", help="also time int8 decoding and its agreement with fp32")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    return parser.parse_args(argv)


def build_decoder(model_name: str, device: torch.device, dtype: torch.dtype) -> CocaDecoder:
    register_configs()  # the project's own configs (xmodal-tiny-coca, ...) too
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


@torch.inference_mode()
def agreement(fp32: CocaDecoder, int8: CocaDecoder, images: torch.Tensor, fp32_tokens, int8_tokens) -> dict:
    """How far int8 decoding moves from fp32 on the same images (every sequence has the same length)."""
    sequences = torch.tensor([[fp32.tokenizer.sot_token_id, *tokens] for tokens in fp32_tokens], device=images.device)
    logprobs = []
    for decoder in (fp32, int8):
        _, image_embs = decoder.model._encode_image(images)
        state = decoder._cached.new_state(image_embs)  # the cached forward, fed the whole fp32 sequence
        logits = decoder._cached.forward(state, sequences[:, :-1], all_positions=True)
        logprobs.append(logits.float().log_softmax(-1))
    targets = sequences[:, 1:].unsqueeze(-1)
    fp32_picked, int8_picked = (lp.gather(-1, targets).squeeze(-1) for lp in logprobs)
    return {
        "same_sequence_as_fp32": sum(a == b for a, b in zip(fp32_tokens, int8_tokens)) / len(fp32_tokens),
        "teacher_forced_top1_agreement": (logprobs[0].argmax(-1) == logprobs[1].argmax(-1)).float().mean().item(),
        "mean_abs_logprob_change": (fp32_picked - int8_picked).abs().mean().item(),
    }


def measure(decoder: CocaDecoder, args: argparse.Namespace, host: str, int8: CocaDecoder | None = None) -> list[dict]:
    """Cached and reference rows for each batch size; speedup is reference time / row time."""
    input_size = decoder.model.visual.image_size[0]
    options = DecodeOptions(max_new_tokens=args.tokens, min_new_tokens=args.tokens)
    rows = []
    for batch in args.batch_sizes:
        images = torch.randn(batch, 3, input_size, input_size, generator=torch.Generator().manual_seed(batch))
        images = images.to(decoder.device)
        cached_s, cached_tokens = time_generate(decoder, images, options, use_cache=True, repeats=args.repeats)
        reference_s, reference_tokens = time_generate(decoder, images, options, use_cache=False, repeats=args.repeats)
        timed = [
            ("cached greedy", cached_s, cached_tokens, {}),
            ("reference greedy", reference_s, reference_tokens, {}),
        ]
        if int8 is not None:
            int8_s, int8_tokens = time_generate(int8, images, options, use_cache=True, repeats=args.repeats)
            moved = agreement(decoder, int8, images, cached_tokens, int8_tokens)
            timed.insert(1, ("cached greedy int8", int8_s, int8_tokens, moved))
        for decoding, seconds, tokens, moved in timed:
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
                    "same_tokens_as_reference": tokens == reference_tokens,
                    **moved,
                }
            )
    return rows


def bytes_per_step(decoder: CocaDecoder) -> int:
    """Weight bytes one cached step reads: the text tower's and decoder's blocks and the vocabulary
    projection. The token embedding is a row lookup, and the image keys and values of cross
    attention are computed once per image, so neither counts."""
    text, decoder_tower = decoder.model.text, decoder.model.text_decoder
    blocks = [*text.transformer.resblocks, *decoder_tower.resblocks, *decoder_tower.cross_attn]
    read = sum(p.numel() * p.element_size() for block in blocks for p in block.parameters())
    for block in decoder_tower.cross_attn:  # only the query third of the packed in-projection is read
        weight = block.attn.in_proj_weight
        read -= weight.numel() * weight.element_size() * 2 // 3
    projection = decoder_tower.text_projection
    return read + projection.numel() * projection.element_size()


def matvec_bandwidth(device: torch.device, dtype: torch.dtype, megabytes: int = 256) -> float:
    """Bytes per second a (1 x n) @ (n x m) product streams from memory, best of 10."""
    element = torch.empty((), dtype=dtype).element_size()
    weight = torch.randn(megabytes * 2**20 // element // 1024, 1024, device=device).to(dtype)
    vector = torch.randn(1, 1024, device=device).to(dtype)
    best = float("inf")
    for _ in range(11):
        _synchronize(device)
        start = time.perf_counter()
        torch.nn.functional.linear(vector, weight)
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return weight.numel() * element / best


def print_table(rows: list[dict], summary: str) -> None:
    print(summary)
    print(
        f"{'model':<14} {'decoding':<18} {'batch':>5} {'input':>5} "
        f"{'ms/caption':>10} {'captions/s':>10} {'speedup':>7} {'same':>5}"
    )
    for row in rows:
        moved = ""
        if "same_sequence_as_fp32" in row:
            moved = (
                f"  vs fp32: {row['same_sequence_as_fp32']:.0%} same sequences, "
                f"{row['teacher_forced_top1_agreement']:.1%} teacher-forced top-1, "
                f"mean |d logprob| {row['mean_abs_logprob_change']:.4f}"
            )
        print(
            f"{row['model']:<14} {row['decoding']:<18} {row['batch']:>5} {row['input_size']:>5} "
            f"{row['ms_per_caption']:>10.1f} {row['captions_per_s']:>10.2f} "
            f"{row['speedup_vs_reference']:>6.2f}x {str(row['same_tokens_as_reference']):>5}{moved}"
        )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    auto_device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto_device if args.device == "auto" else args.device)
    decoder = build_decoder(args.model, device, DTYPES[args.dtype])
    int8 = CocaDecoder(decoder.model, decoder.tokenizer, int8=True) if args.int8 else None
    host = hardware(device)

    load_before = os.getloadavg()[0]  # the CPU may be shared; a busy host slows every row
    rows = measure(decoder, args, host, int8)
    bandwidth = matvec_bandwidth(device, DTYPES[args.dtype])
    load = {"before": load_before, "after": os.getloadavg()[0]}
    print_table(
        rows,
        f"hardware: {host}; torch {torch.__version__}; open_clip {open_clip.__version__}; {args.dtype}; "
        f"{args.tokens} new tokens; median of {args.repeats} after 1 warm-up; "
        f"1-min load average {load['before']:.1f} -> {load['after']:.1f} on {os.cpu_count()} CPUs",
    )
    step_bytes = bytes_per_step(decoder)
    int8_bytes = step_bytes // decoder.model.text_decoder.text_projection.element_size()
    floor = {
        "matvec_bandwidth_gb_s": bandwidth / 1e9,
        "weight_bytes_per_step": step_bytes,
        "floor_ms_per_caption": 1000 * args.tokens * step_bytes / bandwidth,
        "int8_floor_ms_per_caption": 1000 * args.tokens * int8_bytes / bandwidth,
    }
    print(
        f"batch-1 floor (decoder steps only, image encoder excluded): {step_bytes / 1e6:.0f} MB of {args.dtype} "
        f"weights per step at a measured {bandwidth / 1e9:.1f} GB/s = {floor['floor_ms_per_caption']:.0f} ms per "
        f"{args.tokens}-token caption; int8 weights ({int8_bytes / 1e6:.0f} MB): "
        f"{floor['int8_floor_ms_per_caption']:.0f} ms"
    )

    report = {
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "load_average_1m": load,
        "batch1_floor": floor,
        "results": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
