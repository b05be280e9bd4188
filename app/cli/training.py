"""`xmodal train` (train or fine-tune a model) and `xmodal eval` (measure one).

Every `train` default is read from models.training.recipes.WORLD_RECIPE (a TrainConfig), so the command line
and the recipe cannot drift apart. Only the recipe (plain dataclasses) is read at import; torch and the training
loop are imported inside the commands, so `xmodal --help` stays fast.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from xmodal.app.cli.common import DeviceOption, fail, setup_logging
from xmodal.models.rerank import RERANK_DEPTH
from xmodal.models.training.config import Precision
from xmodal.models.training.recipes import WORLD_DATA, WORLD_RECIPE

WORLD = "world"
TRAINING_RECORD = "training.json"  # written next to the weights in the model folder
# Held-out scenes evaluated during and after `xmodal train` (fewer than `xmodal eval`'s, to stay quick).
TRAIN_EVAL_SCENES = 500


def train(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Model folder to write (open_clip local-dir); "
            "checkpoints go to OUT.checkpoints, and a rerun resumes from them",
        ),
    ],
    data: Annotated[
        str, typer.Option(help="'world' (the generated world's train split) or an image,caption CSV")
    ] = WORLD,
    scenes: Annotated[int, typer.Option(min=2, help="World: training scenes")] = WORLD_DATA.scenes,
    seed: Annotated[int, typer.Option(help="World: its seed (`xmodal eval` needs the same one)")] = WORLD_DATA.seed,
    languages: Annotated[
        str, typer.Option(help="World: languages of its texts, comma-separated (en, zh); zh needs --tokenizer world")
    ] = ",".join(WORLD_DATA.languages),
    tokenizer: Annotated[
        Optional[str],
        typer.Option(help="'world': learn a tokenizer from the world's text, written with the model (from scratch)"),
    ] = WORLD_RECIPE.tokenizer,
    image_root: Annotated[
        Optional[Path],
        typer.Option(
            help="CSV: folder the `image` column is relative to (default: CSV_DIR/images if present, else CSV_DIR)"
        ),
    ] = None,
    questions: Annotated[Optional[Path], typer.Option(help="CSV: image,question,answer rows for VQA")] = None,
    model: Annotated[
        str, typer.Option(help="Start point: an architecture name (from scratch) or any model spec (fine-tune)")
    ] = WORLD_RECIPE.model,
    steps: Annotated[int, typer.Option(min=1, help="Optimiser steps")] = WORLD_RECIPE.steps,
    batch_size: Annotated[int, typer.Option(min=2, help="Images per step")] = WORLD_RECIPE.batch_size,
    lr: Annotated[float, typer.Option(help="Peak learning rate")] = WORLD_RECIPE.lr,
    warmup: Annotated[
        int, typer.Option(min=0, help="Linear warm-up steps (then cosine decay)")
    ] = WORLD_RECIPE.warmup_steps,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay")] = WORLD_RECIPE.weight_decay,
    caption_weight: Annotated[
        float, typer.Option(help="Caption loss weight (CoCa)")
    ] = WORLD_RECIPE.caption_loss_weight,
    contrastive_weight: Annotated[
        float, typer.Option(help="Contrastive loss weight")
    ] = WORLD_RECIPE.contrastive_loss_weight,
    vqa_fraction: Annotated[
        float, typer.Option(help="Share of decoder targets that are question/answer texts")
    ] = WORLD_RECIPE.vqa_fraction,
    decoder_lr_scale: Annotated[
        float, typer.Option(help="CoCa: the decoder's learning rate is lr times this")
    ] = WORLD_RECIPE.decoder_lr_scale,
    decoder_targets: Annotated[
        int,
        typer.Option(
            min=1,
            help="Decoder texts per image and step: a caption, then question/answer texts (each with --vqa-fraction)",
        ),
    ] = WORLD_RECIPE.decoder_targets,
    contrastive_texts: Annotated[
        int,
        typer.Option(
            min=1, help="Contrastive texts per image and step: a caption, then captions or (world) partial queries"
        ),
    ] = WORLD_RECIPE.contrastive_texts,
    query_fraction: Annotated[
        float, typer.Option(help="World: share of the extra contrastive texts that are partial attribute queries")
    ] = WORLD_RECIPE.query_fraction,
    hard_negatives: Annotated[
        int, typer.Option(min=0, help="World: captions of near-miss scenes per image, as negatives")
    ] = WORLD_RECIPE.hard_negatives,
    swap_negatives: Annotated[
        int,
        typer.Option(
            min=0, help="World: captions of the scene with an attribute swapped between two objects, as negatives"
        ),
    ] = WORLD_RECIPE.swap_negatives,
    twin_fraction: Annotated[
        float,
        typer.Option(help="World: share of odd batch slots holding the slot before's scene with an attribute swapped"),
    ] = WORLD_RECIPE.twin_fraction,
    qa_targets: Annotated[
        int,
        typer.Option(min=0, help="Extra decoder texts per image that are always question/answer texts, types balanced"),
    ] = WORLD_RECIPE.qa_targets,
    presence_weight: Annotated[
        float,
        typer.Option(help="World: --qa-targets draw a presence question this many times as often as each other type"),
    ] = WORLD_RECIPE.presence_weight,
    attention_weight: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="World: weight of the loss teaching the decoder where a question's answer is in the image (0: off)",
        ),
    ] = WORLD_RECIPE.attention_loss_weight,
    image_to_query_weight: Annotated[
        float,
        typer.Option(min=0.0, help="World: weight of each image ranking the batch's partial queries (0: off)"),
    ] = WORLD_RECIPE.image_to_query_weight,
    answers_only: Annotated[
        bool,
        typer.Option(
            "--vqa-answers-only/--vqa-whole-text",
            help="Question/answer targets teach the answer only (the question is a prompt), or the whole text",
        ),
    ] = WORLD_RECIPE.vqa_answers_only,
    vision_position_std: Annotated[
        float,
        typer.Option(
            min=0.0, help="From scratch: std of the vision transformer's initial position embeddings (0: open_clip's)"
        ),
    ] = WORLD_RECIPE.vision_position_std or 0.0,
    train_seed: Annotated[int, typer.Option(help="Seed of the initial weights and batch order")] = WORLD_RECIPE.seed,
    device: Annotated[str, typer.Option(help="auto (CUDA if present), cpu, cuda, cuda:N")] = "auto",
    precision: Annotated[
        Precision, typer.Option(help="auto (bf16/fp16 on CUDA, fp32 on CPU), fp32, bf16, fp16")
    ] = WORLD_RECIPE.precision,
    threads: Annotated[
        Optional[int], typer.Option(min=1, help="CPU threads (default: the cores the data workers leave free)")
    ] = None,
    workers: Annotated[int, typer.Option(min=0, help="Data loader worker processes")] = WORLD_RECIPE.num_workers,
    checkpoint_every: Annotated[
        int, typer.Option(min=1, help="Steps between checkpoints")
    ] = WORLD_RECIPE.checkpoint_every,
    eval_every: Annotated[
        int, typer.Option(min=0, help="World: steps between held-out evaluations (0: only at the end)")
    ] = 0,
    evaluate: Annotated[
        bool, typer.Option(help="World: evaluate on held-out scenes (at the end, and every --eval-every)")
    ] = True,
    eval_scenes: Annotated[
        int, typer.Option(min=10, help="World: held-out scenes in those evaluations")
    ] = TRAIN_EVAL_SCENES,
    progress: Annotated[bool, typer.Option(help="Show a progress bar (loss and samples/s)")] = True,
) -> None:
    """Train a model (CoCa: contrastive + captions + VQA) and write it as a model folder.

    Use the result anywhere a model spec goes: `xmodal index ... --model local-dir:OUT`.
    Rerunning the same command after a crash resumes from the last checkpoint.
    """
    from xmodal.models.loading import ModelNotAvailable, ModelSpecError
    from xmodal.models.training import CheckpointMismatchError, CsvData, WorldData

    setup_logging()
    try:
        source: WorldData | CsvData
        if data == WORLD:
            source = WorldData(scenes=scenes, seed=seed, languages=tuple(x.strip() for x in languages.split(",")))
        else:
            csv = Path(data)
            if not csv.is_file():
                fail(f"--data must be 'world' or a CSV file; {csv} is not a file")
            if questions is not None and not questions.is_file():
                fail(f"--questions {questions} is not a file")
            source = CsvData(captions_csv=csv, questions_csv=questions, image_root=image_root)
        config = replace(  # the recipe, with every setting the command line has
            WORLD_RECIPE,
            output_dir=out,
            data=source,
            model=model,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            warmup_steps=min(warmup, steps),
            weight_decay=weight_decay,
            caption_loss_weight=caption_weight,
            contrastive_loss_weight=contrastive_weight,
            vqa_fraction=vqa_fraction,
            decoder_lr_scale=decoder_lr_scale,
            decoder_targets=decoder_targets,
            contrastive_texts=contrastive_texts,
            query_fraction=query_fraction if data == WORLD else 0.0,
            hard_negatives=hard_negatives if data == WORLD else 0,
            swap_negatives=swap_negatives if data == WORLD else 0,
            twin_fraction=twin_fraction if data == WORLD else 0.0,
            qa_targets=qa_targets,
            presence_weight=presence_weight,
            attention_loss_weight=attention_weight if data == WORLD else 0.0,
            image_to_query_weight=image_to_query_weight if data == WORLD else 0.0,
            seed=train_seed,
            vqa_answers_only=answers_only,
            vision_position_std=vision_position_std or None,
            device=None if device == "auto" else device,
            precision=precision,
            cpu_threads=threads,
            num_workers=workers,
            checkpoint_every=checkpoint_every,
            eval_every=eval_every if evaluate else 0,
            tokenizer=tokenizer,
        )
    except ValueError as exc:
        fail(str(exc))
    hook = world_evaluation(config.data, eval_scenes) if evaluate and isinstance(config.data, WorldData) else None
    if hook is not None and tokenizer is not None:
        from xmodal.models.training.tokenizer import config_tokenizer

        hook.tokenizer = config_tokenizer(config)  # the same one training learns: a function of the data
    try:
        result = run_training(config, hook, progress)
    except (ModelNotAvailable, ModelSpecError, CheckpointMismatchError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"model written to {result.output_dir}: use --model local-dir:{result.output_dir.resolve()}")


def run_training(config, evaluate=None, progress: bool = True):
    """train() plus a training.json record (settings, curve, evaluations) in the model folder."""
    from xmodal.models.training import train as train_model

    result = train_model(config, progress=progress, evaluate=evaluate)
    record = {
        "trajectory": config.trajectory(),
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "seconds": round(result.seconds, 1),
        "samples_per_second": round(result.samples_per_second, 1),
        "eval_seconds": round(result.eval_seconds, 1),
        "device": str(config.device or "auto"),
        "curve": _curve(result.history),
        "evaluations": list(result.evaluations),
    }
    (Path(config.output_dir) / TRAINING_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    typer.echo(
        f"trained {result.steps} steps ({result.steps - result.resumed_from} in this run, "
        f"{result.seconds:.0f}s, {result.samples_per_second:.0f} samples/s; evaluation {result.eval_seconds:.0f}s)"
    )
    for line in _curve_lines(record["curve"]):
        typer.echo(line)
    if result.evaluations:
        from xmodal.app.reports import world_table

        typer.echo(world_table({k: v for k, v in result.evaluations[-1].items() if k != "step"}))
    return result


def evaluate(
    model: Annotated[
        Optional[str], typer.Option(help="Model spec to evaluate on the generated world's held-out scenes")
    ] = None,
    index: Annotated[
        Optional[list[Path]],
        typer.Option(help="Index folder built with --captions: recall@K both ways (repeat for several)"),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for eval.json and eval.png")] = Path("eval"),
    scenes: Annotated[int, typer.Option(min=10, help="World: held-out scenes (gallery and captioned images)")] = 1000,
    seed: Annotated[int, typer.Option(help="World: its seed (the one the model was trained on)")] = 0,
    queries: Annotated[int, typer.Option(min=1, help="World: attribute queries for text→image precision")] = 500,
    questions_per_type: Annotated[int, typer.Option(min=0, help="World: VQA questions per type (0: no VQA)")] = 200,
    captions: Annotated[Optional[int], typer.Option(min=0, help="World: scenes to caption (default: all)")] = None,
    languages: Annotated[
        str, typer.Option(help="World: languages to measure in, comma-separated (en, zh: metrics suffixed _zh)")
    ] = "en",
    device: DeviceOption = "auto",
    threads: Annotated[Optional[int], typer.Option(min=1, help="CPU threads (default: usable cores)")] = None,
    server: Annotated[
        Optional[str],
        typer.Option(
            help="World: also measure captions and VQA through this running "
            "server's /v1/caption and /v1/vqa (e.g. http://127.0.0.1:8000)"
        ),
    ] = None,
    api_key: Annotated[
        Optional[str], typer.Option(envvar="XMODAL_API_KEY", help="Key for --server, if it needs one")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="--server: requests in flight")] = 4,
    decoder_rerank: Annotated[
        int,
        typer.Option(
            min=0,
            help="World, CoCa: also text→image precision with the decoder re-scoring the first N results (0: off)",
        ),
    ] = RERANK_DEPTH,
) -> None:
    """Measure retrieval, captioning and VQA quality; prints tables, writes OUT/eval.json and OUT/eval.png.

    --model: on the generated world's held-out scenes (exact ground truth): text→image
    precision@K for attribute queries, image→text recall@K, caption exact match and token F1,
    VQA accuracy per question type (open-ended and ranked answers).
    --index: recall@1/5/10 both ways over an index built with a captions CSV (e.g. Flickr-style).
    --server: the same caption and VQA metrics through a running server's endpoints, and text→image
    precision through /v1/search/text when its index holds the world's scenes (`xmodal demo --scenes 1000`);
    with --model, side by side with the in-process numbers (equal when the server runs that model).
    """
    from xmodal.app.reports import comparison_table, draw_plot, index_table, world_table

    setup_logging("warning")
    if model is None and not index and server is None:
        fail(
            "give --model SPEC (world evaluation), --server URL (its endpoints) and/or --index DIR "
            "(recall@K over its captions)"
        )
    report: dict[str, Any] = {}
    world = dict(
        scenes=scenes,
        seed=seed,
        queries=queries,
        questions_per_type=questions_per_type,
        captions=captions,
        rerank=decoder_rerank,
    )
    if model is not None:
        wanted = tuple(x.strip() for x in languages.split(","))
        report["world"] = _evaluate_world(model, device, threads, **world, languages=wanted)
        typer.echo(world_table(report["world"]["metrics"]))
    if server is not None:
        report["server"] = _evaluate_server(server, api_key, concurrency, **world)
        served = report["server"]["metrics"]
        typer.echo(comparison_table(report["world"]["metrics"], served) if model else world_table(served))
    indexes = {}
    for folder in index or []:
        indexes[str(folder)] = _evaluate_index(folder)
        typer.echo(index_table(str(folder), indexes[str(folder)]))
    if indexes:
        report["indexes"] = indexes
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    plot = draw_plot(out / "eval.png", report.get("world", {}).get("metrics"), indexes)
    typer.echo(f"wrote {out / 'eval.json'} and {plot}")


def _evaluate_server(url: str, api_key: str | None, concurrency: int, **settings) -> dict:
    import httpx

    from xmodal.app.client import XmodalClient, XmodalHTTPError
    from xmodal.app.endpoint_eval import evaluate_through_server
    from xmodal.models.training.world_evaluation import WorldEvalConfig, WorldEvaluation

    started = time.perf_counter()
    evaluation = WorldEvaluation(WorldEvalConfig(ks=(1, 5, 10), **settings))
    try:
        with XmodalClient(url, api_key=api_key, timeout=300) as client:
            served = client.index().model_dump()
            result = evaluate_through_server(
                client, evaluation, concurrency=concurrency, decoder_rerank=settings["rerank"]
            )
            for skipped in result.examples.get("search", []):
                typer.echo(f"search not measured: {skipped['not measured']}")
    except XmodalHTTPError as exc:
        fail(f"{url} answered {exc.status}: {exc.detail}")
    except httpx.HTTPError as exc:
        fail(f"cannot reach {url}: {exc}")
    return {
        "url": url,
        "served": served,
        "settings": dict(settings),
        "metrics": result.metrics,
        "counts": result.counts,
        "examples": result.examples,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _evaluate_world(spec: str, device: str, threads: int | None, **settings) -> dict:
    import torch

    from xmodal.models.loading import ModelNotAvailable, ModelSpecError, load_model
    from xmodal.models.training.world_evaluation import WorldEvalConfig, WorldEvaluation

    try:
        loaded = load_model(spec, device, threads=threads)
    except (ModelNotAvailable, ModelSpecError, ValueError) as exc:
        fail(str(exc))
    started = time.perf_counter()
    config = WorldEvalConfig(ks=(1, 5, 10), **settings)
    evaluation = WorldEvaluation(config, tokenizer=loaded.tokenizer, preprocess=loaded.preprocess)
    with torch.inference_mode():
        result = evaluation.evaluate(loaded.model)
    return {
        "model": str(loaded.spec),
        "fingerprint": loaded.fingerprint,
        "settings": dict(settings),
        "metrics": result.metrics,
        "counts": result.counts,
        "examples": result.examples,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _evaluate_index(folder: Path) -> dict[str, float]:
    from xmodal.indexer.caption_recall import NoCaptionsError, index_recall
    from xmodal.indexer.store import IndexNotFound

    try:
        return index_recall(folder)
    except (NoCaptionsError, IndexNotFound, FileNotFoundError) as exc:
        fail(str(exc))


def world_evaluation(data, scenes: int = TRAIN_EVAL_SCENES):
    """train()'s hook: a quick held-out evaluation (300 queries, up to 200 captions, 50 questions a type)."""
    from xmodal.models.training.world_evaluation import WorldEvalConfig, WorldEvaluation

    config = WorldEvalConfig(
        seed=data.seed,
        languages=data.languages,
        heldout_fraction=data.heldout_fraction,
        image_size=data.image_size,
        scenes=scenes,
        queries=300,
        captions=min(200, scenes),
        questions_per_type=min(50, max(1, scenes // 10)),
    )
    return WorldEvaluation(config)


def _curve(history) -> list[dict[str, float]]:
    """The loss curve in about 20 points, each the mean of the steps since the previous one."""
    if not history:
        return []
    every = max(1, len(history) // 20)
    points = []
    for end in range(every, len(history) + every, every):
        window = history[max(0, end - every) : end]
        if not window:
            continue
        keys = [k for k in window[0] if k.endswith("loss")]
        points.append(
            {"step": window[-1]["step"], **{k: round(sum(h[k] for h in window) / len(window), 4) for k in keys}}
        )
    return points


def _curve_lines(curve: list[dict[str, float]]) -> list[str]:
    if not curve:
        return []
    keys = [k for k in curve[0] if k != "step"]
    shown = curve[:: max(1, len(curve) // 5)] + ([curve[-1]] if len(curve) % 5 else [])
    return ["loss curve: " + "  ".join(f"{k.removesuffix('_loss')}" for k in keys)] + [
        f"  step {int(p['step']):>6}: " + "  ".join(f"{p[k]:.3f}" for k in keys) for p in shown
    ]
