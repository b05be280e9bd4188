"""`xmodal train`, `xmodal eval` and `xmodal demo`: train a model, measure it, show it off.

Registered on the `xmodal` Typer app in app/cli.py. Heavy imports (torch, training code)
happen inside the commands, so `xmodal --help` stays fast.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from xmodal.models.training.recipes import DEFAULT_MODEL, WORLD_RECIPE, WORLD_SCENES

WORLD = "world"
TRAINING_RECORD = "training.json"  # written next to the weights in the model folder
# Held-out scenes evaluated during and after `xmodal train` (fewer than `xmodal eval`'s, to stay quick).
TRAIN_EVAL_SCENES = 500
DEMO_DIR = Path("~/.cache/xmodal")


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", fg="red", err=True)
    return typer.Exit(code)


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
    scenes: Annotated[int, typer.Option(min=2, help="World: training scenes")] = WORLD_SCENES,
    seed: Annotated[int, typer.Option(help="World: its seed (`xmodal eval` needs the same one)")] = 0,
    image_root: Annotated[
        Optional[Path],
        typer.Option(
            help="CSV: folder the `image` column is relative to (default: CSV_DIR/images if present, else CSV_DIR)"
        ),
    ] = None,
    questions: Annotated[Optional[Path], typer.Option(help="CSV: image,question,answer rows for VQA")] = None,
    model: Annotated[
        str, typer.Option(help="Start point: an architecture name (from scratch) or any model spec (fine-tune)")
    ] = DEFAULT_MODEL,
    steps: Annotated[int, typer.Option(min=1, help="Optimiser steps")] = WORLD_RECIPE["steps"],
    batch_size: Annotated[int, typer.Option(min=2, help="Images per step")] = WORLD_RECIPE["batch_size"],
    lr: Annotated[float, typer.Option(help="Peak learning rate")] = WORLD_RECIPE["lr"],
    warmup: Annotated[int, typer.Option(min=0, help="Linear warm-up steps (then cosine decay)")] = WORLD_RECIPE[
        "warmup_steps"
    ],
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay")] = WORLD_RECIPE["weight_decay"],
    caption_weight: Annotated[float, typer.Option(help="Caption loss weight (CoCa)")] = WORLD_RECIPE[
        "caption_loss_weight"
    ],
    contrastive_weight: Annotated[float, typer.Option(help="Contrastive loss weight")] = WORLD_RECIPE[
        "contrastive_loss_weight"
    ],
    vqa_fraction: Annotated[
        float, typer.Option(help="Share of decoder targets that are question/answer texts")
    ] = WORLD_RECIPE["vqa_fraction"],
    decoder_lr_scale: Annotated[
        float, typer.Option(help="CoCa: the decoder's learning rate is lr times this")
    ] = WORLD_RECIPE["decoder_lr_scale"],
    decoder_targets: Annotated[
        int,
        typer.Option(
            min=1,
            help="Decoder texts per image and step: a caption, then question/answer texts (each with --vqa-fraction)",
        ),
    ] = WORLD_RECIPE["decoder_targets"],
    contrastive_texts: Annotated[
        int,
        typer.Option(
            min=1, help="Contrastive texts per image and step: a caption, then captions or (world) partial queries"
        ),
    ] = WORLD_RECIPE["contrastive_texts"],
    query_fraction: Annotated[
        float, typer.Option(help="World: share of the extra contrastive texts that are partial attribute queries")
    ] = WORLD_RECIPE["query_fraction"],
    hard_negatives: Annotated[
        int, typer.Option(min=0, help="World: captions of near-miss scenes per image, as negatives")
    ] = WORLD_RECIPE["hard_negatives"],
    answers_only: Annotated[
        bool,
        typer.Option(
            "--vqa-answers-only/--vqa-whole-text",
            help="Question/answer targets teach the answer only (the question is a prompt), or the whole text",
        ),
    ] = WORLD_RECIPE["vqa_answers_only"],
    vision_position_std: Annotated[
        float,
        typer.Option(
            min=0.0, help="From scratch: std of the vision transformer's initial position embeddings (0: open_clip's)"
        ),
    ] = WORLD_RECIPE["vision_position_std"],
    train_seed: Annotated[int, typer.Option(help="Seed of the initial weights and batch order")] = 0,
    device: Annotated[str, typer.Option(help="auto (CUDA if present), cpu, cuda, cuda:N")] = "auto",
    precision: Annotated[str, typer.Option(help="auto (bf16/fp16 on CUDA, fp32 on CPU), fp32, bf16, fp16")] = "auto",
    threads: Annotated[
        Optional[int], typer.Option(min=1, help="CPU threads (default: the cores the data workers leave free)")
    ] = None,
    workers: Annotated[int, typer.Option(min=0, help="Data loader worker processes")] = WORLD_RECIPE["num_workers"],
    checkpoint_every: Annotated[int, typer.Option(min=1, help="Steps between checkpoints")] = WORLD_RECIPE[
        "checkpoint_every"
    ],
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
    from xmodal.app.cli import setup_logging
    from xmodal.models.loading import ModelNotAvailable, ModelSpecError
    from xmodal.models.training import CheckpointMismatchError, CsvData, TrainConfig, WorldData

    setup_logging()
    try:
        if data == WORLD:
            source: Any = WorldData(scenes=scenes, seed=seed)
        else:
            csv = Path(data)
            if not csv.is_file():
                raise _fail(f"--data must be 'world' or a CSV file; {csv} is not a file")
            if questions is not None and not questions.is_file():
                raise _fail(f"--questions {questions} is not a file")
            source = CsvData(captions_csv=csv, questions_csv=questions, image_root=image_root)
        config = TrainConfig(
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
            seed=train_seed,
            vqa_answers_only=answers_only,
            vision_position_std=vision_position_std or None,
            device=None if device == "auto" else device,
            precision=precision,
            cpu_threads=threads,
            num_workers=workers,
            checkpoint_every=checkpoint_every,
            eval_every=eval_every if evaluate else 0,
        )
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    hook = _world_evaluation(config.data, eval_scenes) if evaluate and isinstance(config.data, WorldData) else None
    try:
        result = run_training(config, hook, progress)
    except (ModelNotAvailable, ModelSpecError, CheckpointMismatchError, FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
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
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N")] = "auto",
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
) -> None:
    """Measure retrieval, captioning and VQA quality; prints tables, writes OUT/eval.json and OUT/eval.png.

    --model: on the generated world's held-out scenes (exact ground truth): text→image
    precision@K for attribute queries, image→text recall@K, caption exact match and token F1,
    VQA accuracy per question type (open-ended and ranked answers).
    --index: recall@1/5/10 both ways over an index built with a captions CSV (e.g. Flickr-style).
    --server: the same caption and VQA metrics through a running server's endpoints; with --model,
    side by side with the in-process numbers (they are equal when the server runs that model).
    """
    from xmodal.app.cli import setup_logging
    from xmodal.app.reports import comparison_table, draw_plot, index_table, world_table

    setup_logging("warning")
    if model is None and not index and server is None:
        raise _fail(
            "give --model SPEC (world evaluation), --server URL (its endpoints) and/or --index DIR "
            "(recall@K over its captions)"
        )
    report: dict[str, Any] = {}
    world = dict(scenes=scenes, seed=seed, queries=queries, questions_per_type=questions_per_type, captions=captions)
    if model is not None:
        report["world"] = _evaluate_world(model, device, threads, **world)
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

    from xmodal.app.client import XmodalClient, XmodalError
    from xmodal.app.endpoint_eval import evaluate_through_server
    from xmodal.models.training.world_evaluation import WorldEvalConfig, WorldEvaluation

    started = time.perf_counter()
    # No retrieval queries: the server's index is not the evaluation's gallery.
    evaluation = WorldEvaluation(WorldEvalConfig(**{**settings, "queries": 1}))
    try:
        with XmodalClient(url, api_key=api_key, timeout=300) as client:
            served = client.index().model_dump()
            result = evaluate_through_server(client, evaluation, concurrency=concurrency)
    except XmodalError as exc:
        raise _fail(f"{url} answered {exc.status}: {exc.detail}") from exc
    except httpx.HTTPError as exc:
        raise _fail(f"cannot reach {url}: {exc}") from exc
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
        raise _fail(str(exc)) from exc
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
        raise _fail(str(exc)) from exc


def demo(
    cache_dir: Annotated[
        Path,
        typer.Option(envvar="XMODAL_DEMO_DIR", help="Where the trained model, scenes and index are kept and reused"),
    ] = DEMO_DIR,
    scenes: Annotated[int, typer.Option(min=10, help="Held-out scenes exported and indexed")] = 3000,
    host: Annotated[str, typer.Option(help="Bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port")] = 8000,
    device: Annotated[str, typer.Option(help="auto (CUDA if present), cpu, cuda, cuda:N")] = "auto",
    threads: Annotated[Optional[int], typer.Option(min=1, help="CPU threads for training")] = None,
    retrain: Annotated[bool, typer.Option(help="Train again even if a model with these settings is cached")] = False,
    steps: Annotated[int, typer.Option(min=1, help="Training steps (fewer: a quicker, weaker demo)")] = WORLD_RECIPE[
        "steps"
    ],
    model: Annotated[str, typer.Option(help="Architecture to train from scratch")] = DEFAULT_MODEL,
    eval_scenes: Annotated[int, typer.Option(min=10, hidden=True)] = TRAIN_EVAL_SCENES,
    serve: Annotated[bool, typer.Option(help="Start the server at the end (--no-serve: only prepare)")] = True,
) -> None:
    """Offline demo: train the small model on the generated world (or reuse it), index held-out scenes, serve.

    Nothing is downloaded. The first run trains xmodal-small-coca from scratch (8 minutes
    measured on a busy 2-core CPU; on the GPU when there is one) and prints its held-out
    quality; later runs reuse the cached model, scenes and index.
    """
    from xmodal.app.cli import setup_logging
    from xmodal.models.training import CheckpointMismatchError
    from xmodal.models.training.recipes import world_config

    setup_logging()
    root = cache_dir.expanduser()
    model_dir = root / "demo-model"
    config = world_config(
        model_dir,
        device=None if device == "auto" else device,
        cpu_threads=threads,
        steps=steps,
        warmup_steps=min(WORLD_RECIPE["warmup_steps"], steps),
        model=model,
    )
    record = _training_record(model_dir)
    if retrain or record is None or record.get("trajectory") != config.trajectory():
        typer.echo(f"training {config.model} on the generated world ({config.steps} steps) into {model_dir}")
        if retrain:
            shutil.rmtree(config.resolved_checkpoint_dir, ignore_errors=True)
        try:
            run_training(config, _world_evaluation(config.data, eval_scenes))
        except CheckpointMismatchError:  # checkpoints of an older recipe: start over
            shutil.rmtree(config.resolved_checkpoint_dir, ignore_errors=True)
            run_training(config, _world_evaluation(config.data, eval_scenes))
        record = _training_record(model_dir)
    else:
        typer.echo(f"reusing the model trained in {model_dir} ({record['steps']} steps, {record['seconds']:.0f}s)")
        if record.get("evaluations"):
            from xmodal.app.reports import world_table

            typer.echo(world_table({k: v for k, v in record["evaluations"][-1].items() if k != "step"}))

    data_dir = _export_heldout(root / "demo-scenes", config.data, scenes)
    index_dir = _build_demo_index(root / "demo-index", data_dir, model_dir, device)
    example = sorted((data_dir / "images").glob("*.png"))[0]
    _print_examples(host, port, example)
    if serve:
        from xmodal.app.cli import serve as serve_command

        serve_command(index=[str(index_dir)], host=host, port=port, device=device, model=None)


def _world_evaluation(data, scenes: int = TRAIN_EVAL_SCENES):
    """train()'s hook: a quick held-out evaluation (300 queries, up to 200 captions, 50 questions a type)."""
    from xmodal.models.training.world_evaluation import WorldEvalConfig, WorldEvaluation

    config = WorldEvalConfig(
        seed=data.seed,
        heldout_fraction=data.heldout_fraction,
        image_size=data.image_size,
        scenes=scenes,
        queries=300,
        captions=min(200, scenes),
        questions_per_type=min(50, max(1, scenes // 10)),
    )
    return WorldEvaluation(config)


def _training_record(model_dir: Path) -> dict | None:
    path = model_dir / TRAINING_RECORD
    weights = model_dir / "open_clip_model.safetensors"
    if not (path.is_file() and weights.is_file()):
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def _export_heldout(folder: Path, data, count: int) -> Path:
    """The first `count` held-out scenes as images + captions.csv (reused when already written)."""
    from tqdm import tqdm

    from xmodal.models.world import World, write_scenes

    stamp = {
        "seed": data.seed,
        "heldout_fraction": data.heldout_fraction,
        "scenes": count,
        "image_size": data.image_size,
    }
    marker = folder / "export.json"
    if marker.is_file() and json.loads(marker.read_text()) == stamp:
        typer.echo(f"reusing {count} held-out scenes in {folder}")
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    world = World(seed=data.seed, heldout_fraction=data.heldout_fraction)
    scenes = tqdm(world.scenes(count, "heldout"), desc="writing held-out scenes", unit="scene")
    write_scenes(scenes, folder, image_size=data.image_size)
    marker.write_text(json.dumps(stamp) + "\n")
    return folder


def _build_demo_index(folder: Path, data_dir: Path, model_dir: Path, device: str) -> Path:
    """Index the exported scenes with their captions; reused while model and scenes are unchanged."""
    from xmodal.indexer.build import BuildConfig, build_index

    weights = model_dir / "open_clip_model.safetensors"
    stamp = {
        "model_mtime_ns": weights.stat().st_mtime_ns,
        "model_size": weights.stat().st_size,
        "scenes": json.loads((data_dir / "export.json").read_text()),
    }
    marker = folder.with_name(folder.name + ".json")
    if (folder / "CURRENT").is_file() and marker.is_file() and json.loads(marker.read_text()) == stamp:
        typer.echo(f"reusing the index in {folder}")
        return folder
    report = build_index(
        BuildConfig(
            source=data_dir / "images",
            out=folder,
            model=f"local-dir:{model_dir}",
            captions=data_dir / "captions.csv",
            workers=0,
            device=device,
        )
    )
    typer.echo(f"indexed {report.indexed} scenes and {report.texts} captions into {folder}")
    marker.write_text(json.dumps(stamp) + "\n")
    return folder


def _print_examples(host: str, port: int, image: Path) -> None:
    url = f"{host}:{port}"
    lines = [
        f"Serving on http://{url} (docs at /docs). Try:",
        f'  curl -s {url}/v1/search/text -H \'content-type: application/json\' -d \'{{"text": "a large red circle", "k": 3}}\'',
        f'  curl -s {url}/v1/search/text -H \'content-type: application/json\' -d \'{{"text": "a blue star on the left and a small yellow square", "k": 3}}\'',
        f"  curl -s {url}/v1/search/image -F file=@{image} -F k=3",
        f"  curl -s {url}/v1/search/image -F file=@{image} -F target=texts -F k=3",
        f"  curl -s {url}/v1/caption -F file=@{image}",
        f"  curl -s {url}/v1/vqa -F file=@{image} -F 'question=how many shapes are there?'",
    ]
    typer.echo("\n".join(lines))


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
