"""Quality benchmark: train the demo recipe from scratch on the generated world, then evaluate it.

Trains xmodal-small-coca with models.training.recipes.WORLD_RECIPE (what `xmodal demo` trains),
then runs the full held-out evaluation of `xmodal eval` (1,000 unseen scenes). Prints the table
and writes JSON with the settings, the machine, the training curve and every metric.

    .venv/bin/python bench/bench_world.py --threads 1          # about 10 minutes on a 2-core CPU
    .venv/bin/python bench/bench_world.py --steps 200          # a quicker, weaker run
    .venv/bin/python bench/bench_world.py --set batch_size=128 --set warmup_steps=30  # a recipe variant
    .venv/bin/python bench/bench_world.py --languages en,zh --tokenizer world  # bilingual (bilingual-world.md)
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch

from xmodal.app.reports import world_table  # noqa: E402
from xmodal.models.text_tokenizer import folder_tokenizer  # noqa: E402
from xmodal.models.training import train  # noqa: E402
from xmodal.models.training.recipes import WORLD_RECIPE, world_config  # noqa: E402
from xmodal.models.training.world_evaluation import WorldEvalConfig, WorldEvaluation  # noqa: E402

DEFAULT_OUTPUT = Path(__file__).parent / "results" / "world.json"
# The goals of the issue "Contrastive training, a generated world ...": trained from scratch in
# at most 10 minutes on a 2-core CPU.
TARGETS = {
    "t2i_p@1": 0.95,
    "t2i_rerank_p@1": 0.95,
    "i2t_r@1": 0.95,
    "caption_exact": 0.92,
    "vqa_generated_all": 0.9,
    "vqa_ranked_all": 0.9,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/xmodal-bench-world"), help="model folder (replaced)")
    parser.add_argument("--model", default=WORLD_RECIPE.model, help="the architecture trained from scratch")
    parser.add_argument("--steps", type=int, default=WORLD_RECIPE.steps)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--eval-scenes", type=int, default=1000)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--languages", default="en", help="world languages to train and evaluate in, e.g. en,zh")
    parser.add_argument("--tokenizer", choices=("world",), default=None, help="learn the world's BPE (TrainConfig)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a WORLD_RECIPE setting (a TrainConfig field), e.g. batch_size=128",
    )
    return parser.parse_args(argv)


def _overrides(settings: list[str]) -> dict:
    """`field=value` strings as TrainConfig overrides, each value parsed as the recipe's type."""
    # The recipe's plain (bool, number, text, tuple) fields; --steps has its own option.
    settable = [
        f.name
        for f in dataclasses.fields(WORLD_RECIPE)
        if f.name not in ("model", "steps")
        and isinstance(getattr(WORLD_RECIPE, f.name), (bool, int, float, str, tuple))
    ]
    overrides = {}
    for setting in settings:
        name, _, text = setting.partition("=")
        if name not in settable:
            raise SystemExit(f"--set {setting}: not one of {', '.join(settable)}")
        overrides[name] = _parse(text, type(getattr(WORLD_RECIPE, name)))
    return overrides


def _parse(text: str, kind: type):
    if kind is bool:  # bool("false") is True
        if text.lower() not in ("true", "false", "1", "0"):
            raise SystemExit(f"--set: {text!r} is not true or false")
        return text.lower() in ("true", "1")
    if kind is tuple:  # e.g. model_overrides='(("multimodal_cfg.layers", 3),)'
        return ast.literal_eval(text)
    return kind(text)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    shutil.rmtree(args.out, ignore_errors=True)
    shutil.rmtree(f"{args.out}.checkpoints", ignore_errors=True)
    overrides = {"warmup_steps": min(WORLD_RECIPE.warmup_steps, args.steps), **_overrides(args.set)}
    languages = tuple(args.languages.split(","))
    data = dataclasses.replace(WORLD_RECIPE.data, languages=languages)
    if args.tokenizer:
        overrides["tokenizer"] = args.tokenizer
    config = world_config(
        args.out,
        data=data,
        model=args.model,
        steps=args.steps,
        cpu_threads=args.threads,
        device=args.device,
        **overrides,
    )
    load_before = os.getloadavg()[0]
    result = train(config, progress=True)
    load_after = os.getloadavg()[0]

    if args.threads:
        torch.set_num_threads(args.threads)
    model = _load(args.out, config.device)
    eval_config = WorldEvalConfig(scenes=args.eval_scenes, seed=data.seed, ks=(1, 5, 10), languages=languages)
    # A learnt tokenizer travels in the model folder; without one the evaluation uses CLIP's.
    evaluation = WorldEvaluation(eval_config, tokenizer=folder_tokenizer(args.out, _context_length(model)))
    started = time.perf_counter()
    report = evaluation.evaluate(model)
    eval_seconds = time.perf_counter() - started

    curve = [
        h for h in result.history if h["step"] % max(1, len(result.history) // 20) == 0 or h["step"] == result.steps
    ]
    summary = {
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(next(model.parameters()).device),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "load_average_1m": {"before": load_before, "after": load_after},
        "settings": config.trajectory(),
        "train_seconds": round(result.seconds, 1),
        "samples_per_second": round(result.samples_per_second, 1),
        "steps": result.steps,
        "eval_seconds": round(eval_seconds, 1),
        "eval_counts": report.counts,
        "metrics": report.metrics,
        "targets": {k: {"goal": v, "reached": report.metrics.get(k, 0.0) >= v} for k, v in TARGETS.items()},
        "curve": [{k: round(v, 4) if isinstance(v, float) else v for k, v in h.items()} for h in curve],
        "examples": report.examples,
    }
    print(world_table(report.metrics))
    if len(languages) > 1:
        print("in Chinese (the same scenes and queries, texts in 中文):")
        print(world_table({k.removesuffix("_zh"): v for k, v in report.metrics.items() if k.endswith("_zh")}))
    print(
        f"trained {result.steps} steps in {result.seconds:.0f}s ({result.samples_per_second:.0f} samples/s); "
        f"evaluated in {eval_seconds:.0f}s"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.output}")
    return summary


def _context_length(model) -> int:
    return int(getattr(model, "context_length", None) or model.text.context_length)


def _load(folder: Path, device: str | None):
    from xmodal.models.loading import create_open_clip_model

    model = create_open_clip_model(f"local-dir:{folder}")  # with the architecture's vision stem, if any
    return model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()


if __name__ == "__main__":
    main()
