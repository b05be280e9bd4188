"""`xmodal demo`: train the small model on the generated world (or reuse it), index held-out scenes, serve.

Each step's result is cached under --cache-dir with a stamp of what made it, so a second run starts serving
at once. It shares training and its record with `xmodal train` (training.py) and serves through `xmodal serve`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated, Optional

import typer

from xmodal.app.cli.common import setup_logging
from xmodal.app.cli.training import TRAIN_EVAL_SCENES, TRAINING_RECORD, run_training, world_evaluation
from xmodal.models.rerank import RERANK_DEPTH
from xmodal.models.training.recipes import WORLD_RECIPE

DEMO_DIR = Path("~/.cache/xmodal")


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
    steps: Annotated[
        int, typer.Option(min=1, help="Training steps (fewer: a quicker, weaker demo)")
    ] = WORLD_RECIPE.steps,
    model: Annotated[str, typer.Option(help="Architecture to train from scratch")] = WORLD_RECIPE.model,
    eval_scenes: Annotated[int, typer.Option(min=10, hidden=True)] = TRAIN_EVAL_SCENES,
    serve: Annotated[bool, typer.Option(help="Start the server at the end (--no-serve: only prepare)")] = True,
) -> None:
    """Offline demo: train the small model on the generated world (or reuse it), index held-out scenes, serve.

    Nothing is downloaded. The first run trains xmodal-small-coca from scratch (10 minutes
    measured on a busy 2-core CPU; on the GPU when there is one) and prints its held-out
    quality; later runs reuse the cached model, scenes and index.
    """
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
        warmup_steps=min(WORLD_RECIPE.warmup_steps, steps),
        model=model,
    )
    record = _training_record(model_dir)
    if retrain or record is None or record.get("trajectory") != config.trajectory():
        typer.echo(f"training {config.model} on the generated world ({config.steps} steps) into {model_dir}")
        if retrain:
            shutil.rmtree(config.resolved_checkpoint_dir, ignore_errors=True)
        try:
            run_training(config, world_evaluation(config.data, eval_scenes))
        except CheckpointMismatchError:  # checkpoints of an older recipe: start over
            shutil.rmtree(config.resolved_checkpoint_dir, ignore_errors=True)
            run_training(config, world_evaluation(config.data, eval_scenes))
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
        from xmodal.app.cli.serve import serve as serve_command

        # The demo model is taught the presence question search re-ranking asks (models/rerank.py).
        serve_command(
            index=[str(index_dir)], host=host, port=port, device=device, model=None, decoder_rerank=RERANK_DEPTH
        )


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
        f"Serving on http://{url} (docs at /docs). Text searches have the decoder check their best "
        f'{RERANK_DEPTH} results ("decoder_rerank": 0 for the embedding\'s order alone). Try:',
        f'  curl -s {url}/v1/search/text -H \'content-type: application/json\' -d \'{{"text": "a large red circle", "k": 3}}\'',
        f'  curl -s {url}/v1/search/text -H \'content-type: application/json\' -d \'{{"text": "a blue star on the left and a small yellow square", "k": 3}}\'',
        f"  curl -s {url}/v1/search/image -F file=@{image} -F k=3",
        f"  curl -s {url}/v1/search/image -F file=@{image} -F target=texts -F k=3",
        f"  curl -s {url}/v1/caption -F file=@{image}",
        f"  curl -s {url}/v1/vqa -F file=@{image} -F 'question=how many shapes are there?'",
    ]
    typer.echo("\n".join(lines))
