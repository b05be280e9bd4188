"""The `xmodal` command: index, serve, caption, ask."""

from __future__ import annotations

import os

# Before torch loads its OpenMP runtime: idle OpenMP threads sleep instead of spinning. The model shares
# the cores with the event loop, decode threads and often other processes, and spinning threads there
# made one batch-1 text encode 17x slower (750 ms vs 43 ms, 2 cores, a training job running beside it).
# An OMP_WAIT_POLICY already set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Annotated, Optional  # noqa: E402

import typer  # noqa: E402

from xmodal.models.specs import DEFAULT_SPEC  # noqa: E402

cli = typer.Typer(
    help="xmodal: index a folder of images, then search it by text or image over HTTP.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_OUR_LOGGERS = ("xmodal",)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Our loggers at `level`; third-party libraries (open_clip logs to root) at WARNING. fmt: text or json."""
    from xmodal.app.logs import make_handler

    logging.basicConfig(level=logging.WARNING, handlers=[make_handler(fmt)], force=fmt == "json")
    for name in _OUR_LOGGERS:
        logging.getLogger(name).setLevel(level.upper())


@cli.command()
def index(
    source: Annotated[
        Path,
        typer.Argument(help="Folder of images (recursive), a .txt/.csv/.parquet list of paths or URLs, or .tar shards"),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Index folder; each build publishes a new version in it")],
    model: Annotated[str, typer.Option(help="Model spec (see README: Models)")] = DEFAULT_SPEC,
    captions: Annotated[
        Optional[Path], typer.Option(help="CSV of image,caption rows: enables image→text search")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model batch")] = 64,
    workers: Annotated[Optional[int], typer.Option(min=0, help="Decode worker processes (default: cores-1)")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N")] = "auto",
    max_pixels: Annotated[int, typer.Option(min=1, help="Skip images with more pixels than this")] = 50_000_000,
    keep: Annotated[int, typer.Option(min=1, help="Versions to keep in the index folder")] = 3,
    progress: Annotated[bool, typer.Option(help="Show progress bars")] = True,
    update: Annotated[
        bool, typer.Option(help="Reuse vectors of unchanged files (same path and sha256) from the published version")
    ] = False,
    draft: Annotated[bool, typer.Option(help="Decode large JPEGs at reduced size (faster, see README)")] = True,
    caption: Annotated[
        bool, typer.Option("--caption", help="Also caption every image with the model (CoCa) and index the captions")
    ] = False,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds per URL request")] = 20.0,
    retries: Annotated[int, typer.Option(min=0, help="Retries per URL on timeouts, connection errors, 5xx")] = 2,
    max_download_bytes: Annotated[int, typer.Option(min=1, help="Largest URL download")] = 50 * 1024 * 1024,
    per_host: Annotated[int, typer.Option(min=1, help="Concurrent downloads per host")] = 4,
    budget: Annotated[
        Optional[str], typer.Option(help="Memory for the version's FAISS indexes: 2GB, 512MiB, ... (default: no limit)")
    ] = None,
    recall: Annotated[float, typer.Option(min=0.01, max=1.0, help="recall@10 target for approximate indexes")] = 0.95,
    latency_ms: Annotated[
        float, typer.Option(min=0.0, help="Longest exact (Flat) query before an approximate index is chosen")
    ] = 10.0,
    int8_images: Annotated[
        bool,
        typer.Option(
            "--int8-images",
            help="CPU: run the image tower with int8 weight copies (about 2x "
            "faster; worst cosine to fp32 vectors measured 0.99989, see README)",
        ),
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the build report as JSON (for jobs)")] = False,
    ray: Annotated[
        Optional[str],
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="Build on a Ray cluster: 'local' starts one on this machine, 'auto' joins the running one, "
            "or give its address (HOST:6379, ray://HOST:10001). --out must be on storage every node sees. "
            "Needs pip install 'xmodal[ray]'",
        ),
    ] = None,
    ray_actors: Annotated[int, typer.Option(min=1, help="--ray: embedding actors (one model copy, one GPU each)")] = 1,
    ray_part_size: Annotated[int, typer.Option(min=1, help="--ray: records per part (unit of work and resume)")] = 256,
) -> None:
    """Embed every image of SOURCE and publish an index version under --out.

    A killed build resumes when the same command is run again."""
    import json

    from xmodal.indexer.build import BuildConfig, BuildError, build_index, default_workers
    from xmodal.indexer.download import DownloadConfig
    from xmodal.indexer.selection import parse_bytes
    from xmodal.indexer.tuning import RecallNotReached
    from xmodal.models.loading import ModelNotAvailable, ModelSpecError

    setup_logging()
    try:
        budget_bytes = parse_bytes(budget) if budget else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--budget") from exc
    config = BuildConfig(
        source=source,
        out=out,
        model=model,
        captions=captions,
        batch_size=batch_size,
        workers=default_workers() if workers is None else workers,
        device=device,
        max_pixels=max_pixels,
        keep_versions=keep,
        progress=progress and not json_output,
        update=update,
        draft=draft,
        caption=caption,
        download=DownloadConfig(timeout_s=timeout, retries=retries, max_bytes=max_download_bytes, per_host=per_host),
        budget_bytes=budget_bytes,
        recall=recall,
        latency_ms=latency_ms,
        int8_images=int8_images,
    )
    try:
        if ray:
            from xmodal.indexer.distributed import RayOptions, build_index_on_ray

            report = build_index_on_ray(config, RayOptions(ray, ray_actors, ray_part_size))
        else:
            report = build_index(config)
    except (BuildError, ModelNotAvailable, ModelSpecError, FileNotFoundError, ValueError, RecallNotReached) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    if json_output:
        typer.echo(json.dumps(report.summary(), indent=2))
        return
    summary = report.summary()
    typer.echo(f"published {report.version}")
    for name in (
        "indexed",
        "embedded",
        "reused",
        "duplicates",
        "skipped",
        "ignored",
        "captions",
        "resumed_batches",
        "embed_seconds",
        "images_per_s",
    ):
        typer.echo(f"  {name.replace('_', ' '):<16}{summary[name]:>12}")
    for name, described in report.indexes.items():
        typer.echo(f"  {name + ' index':<16}{described:>12}")
    for path, reason in sorted(report.skipped.items()):
        typer.echo(f"  skipped {path}: {reason}")


@cli.command()
def serve(
    index: Annotated[
        Optional[list[str]],
        typer.Option(help="Index folder, or NAME=FOLDER; repeat it to serve several (or XMODAL_INDEX)"),
    ] = None,
    host: Annotated[Optional[str], typer.Option(help="Bind address (default 127.0.0.1)")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port (default 8000)")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, cuda:N")] = None,
    model: Annotated[Optional[str], typer.Option(help="Override the manifest's model spec (same weights)")] = None,
) -> None:
    """Serve search over one or more indexes. Other settings come from XMODAL_* variables (see README).

    On SIGTERM (or Ctrl-C) it stops accepting connections, lets requests in flight finish (at most
    XMODAL_SHUTDOWN_GRACE_S seconds) and exits 0."""
    import uvicorn
    from pydantic import ValidationError

    from xmodal.app.main import create_app
    from xmodal.app.security import InsecureConfig
    from xmodal.app.settings import Settings

    try:
        indexes = _parse_index_options(index) if index else None
        overrides = {"index": indexes, "host": host, "port": port, "device": device, "model": model}
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except (ValueError, ValidationError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    if not settings.indexes:
        typer.secho("error: give --index DIR (or set XMODAL_INDEX)", fg="red", err=True)
        raise typer.Exit(2)
    setup_logging(settings.log_level, settings.log_format)
    try:
        app = create_app(settings)
    except InsecureConfig as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    # Our middleware writes the access log (with request ids); json: uvicorn's own lines go through our handler.
    log_config = None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            access_log=False,
            log_config=log_config,
            timeout_graceful_shutdown=settings.shutdown_grace_s,
        )
    )
    app.state.stop_server = lambda: setattr(server, "should_exit", True)
    # While it runs, uvicorn handles SIGTERM/SIGINT itself (stop accepting, drain, lifespan shutdown) and then
    # raises the signal again; this handler takes that, so a drained shutdown exits 0 instead of dying by signal.
    stop = lambda *_: app.state.stop_server()  # noqa: E731
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    runtime = getattr(app.state, "runtime", None)
    if runtime is not None and runtime.error:
        typer.secho(f"error: {runtime.error}", fg="red", err=True)
        raise typer.Exit(1)


def _parse_index_options(values: list[str]) -> Path | dict[str, Path]:
    """`--index DIR` (named "default") or `--index NAME=DIR`, repeated; a lone bare DIR stays a plain path."""
    from xmodal.app.settings import DEFAULT_INDEX, INDEX_NAME

    named: dict[str, Path] = {}
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep or "/" in name or not INDEX_NAME.match(name):
            name, folder = DEFAULT_INDEX, value  # a bare folder (which may hold '=' itself)
        if name in named:
            raise ValueError(f"index {name!r} is given twice (--index {value}); give each index its own NAME=")
        named[name] = Path(folder)
    return named if len(values) > 1 or DEFAULT_INDEX not in named else named[DEFAULT_INDEX]


def _load_captioner(model: str, device: str, vqa_prompt: str | None = None, int8: bool = False):
    """The model as a Captioner, or a readable exit 2."""
    from xmodal.models.encoders import Encoder
    from xmodal.models.generation import DEFAULT_VQA_PROMPT, Captioner
    from xmodal.models.loading import ModelNotAvailable, ModelSpecError

    try:
        return Captioner(Encoder.from_spec(model, device), vqa_prompt or DEFAULT_VQA_PROMPT, int8=int8)
    except (ModelNotAvailable, ModelSpecError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc


def _read_pixels(captioner, path: Path, max_pixels: int):
    """The preprocessed image, or None after an error line on stderr."""
    from xmodal.models.images import ImageError, load_image

    if not path.is_file():
        typer.secho(f"error: {path}: no such file", fg="red", err=True)
        return None
    try:
        return captioner.encoder.preprocess_image(load_image(path, max_pixels))
    except (ImageError, OSError) as exc:
        typer.secho(f"error: {path}: {exc}", fg="red", err=True)
        return None


@cli.command()
def caption(
    images: Annotated[list[Path], typer.Argument(help="Image files")],
    model: Annotated[str, typer.Option(help="Model spec with a caption decoder (CoCa)")] = DEFAULT_SPEC,
    mode: Annotated[str, typer.Option(help="greedy, beam or sample")] = "greedy",
    beams: Annotated[Optional[int], typer.Option(help="Beam width for --mode beam (default 3)")] = None,
    max_tokens: Annotated[int, typer.Option(help="Most new tokens per caption")] = 20,
    prompt: Annotated[str, typer.Option(help="Text each caption starts with (left out of the output)")] = "",
    seed: Annotated[Optional[int], typer.Option(help="Seed for --mode sample")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model batch")] = 8,
    int8: Annotated[
        bool, typer.Option("--int8", help="CPU: decode with int8 weight copies (faster, approximate)")
    ] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N")] = "auto",
    max_pixels: Annotated[int, typer.Option(min=1, help="Refuse images with more pixels than this")] = 50_000_000,
) -> None:
    """Caption images: prints PATH<TAB>CAPTION per image. Exit code 1 if any image failed."""
    import torch

    from xmodal.models.decoding import DecodeOptions
    from xmodal.models.generation import DecoderUnavailable

    setup_logging("warning")
    try:
        num_beams = beams if beams is not None else 3 if mode == "beam" else 1
        options = DecodeOptions(mode=mode, num_beams=num_beams, max_new_tokens=max_tokens, prefix=prompt, seed=seed)
    except ValueError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    captioner = _load_captioner(model, device, int8=int8)
    try:
        captioner.require_decoder("captioning")
    except DecoderUnavailable as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    failed = False
    for start in range(0, len(images), batch_size):
        batch = [(path, _read_pixels(captioner, path, max_pixels)) for path in images[start : start + batch_size]]
        good = [(path, pixels) for path, pixels in batch if pixels is not None]
        failed |= len(good) < len(batch)
        if not good:
            continue
        try:
            candidates = captioner.caption(torch.stack([pixels for _, pixels in good]), options)
        except ValueError as exc:  # e.g. a prompt that fills the context
            typer.secho(f"error: {exc}", fg="red", err=True)
            raise typer.Exit(2) from exc
        for (path, _), per_image in zip(good, candidates):
            typer.echo(f"{path}\t{per_image[0].text}")
    if failed:
        raise typer.Exit(1)


@cli.command()
def ask(
    image: Annotated[Path, typer.Argument(help="Image file")],
    question: Annotated[str, typer.Argument(help="The question")],
    answers: Annotated[
        Optional[str], typer.Option(help="Comma-separated candidate answers: prints the best, then every score")
    ] = None,
    model: Annotated[str, typer.Option(help="Model spec (open questions need a CoCa model)")] = DEFAULT_SPEC,
    max_tokens: Annotated[int, typer.Option(min=1, help="Most new tokens of an open-ended answer")] = 10,
    template: Annotated[Optional[str], typer.Option(help="VQA prompt with {question}")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N")] = "auto",
    max_pixels: Annotated[int, typer.Option(min=1, help="Refuse images with more pixels than this")] = 50_000_000,
) -> None:
    """Answer a question about an image. With --answers: the best one, then ANSWER<TAB>SCORE per candidate, best first."""
    from xmodal.models.generation import DecoderUnavailable

    setup_logging("warning")
    candidates = [a.strip() for a in answers.split(",") if a.strip()] if answers is not None else None
    captioner = _load_captioner(model, device, template)
    pixels = _read_pixels(captioner, image, max_pixels)
    if pixels is None:
        raise typer.Exit(1)
    try:
        result = captioner.answer(pixels, question, candidates, max_new_tokens=max_tokens)
    except (DecoderUnavailable, ValueError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    typer.echo(result.answer)
    for answer, score in sorted((result.scores or {}).items(), key=lambda item: -item[1]):
        typer.echo(f"{answer}\t{score:.6f}")


@cli.command()
def reindex(
    index: Annotated[Path, typer.Argument(help="Index folder (with CURRENT)")],
    budget: Annotated[
        Optional[str],
        typer.Option(help="Memory for all FAISS indexes of the version: 2GB, 512MiB, ... (default: no limit)"),
    ] = None,
    recall: Annotated[float, typer.Option(min=0.01, max=1.0, help="recall@10 target for approximate indexes")] = 0.95,
    latency_ms: Annotated[
        float, typer.Option(min=0.0, help="Longest exact (Flat) query before an approximate index")
    ] = 10.0,
    key: Annotated[
        Optional[str], typer.Option(help="Build this faiss index_factory key instead of choosing one")
    ] = None,
    keep: Annotated[int, typer.Option(min=1, help="Versions to keep in the index folder")] = 3,
) -> None:
    """Rebuild the current version's FAISS indexes from its stored embeddings (no re-encoding) for a memory
    budget and a recall target, and publish them as a new version."""
    from xmodal.indexer.reindex import reindex as rebuild
    from xmodal.indexer.selection import NoIndexFits, format_bytes, parse_bytes
    from xmodal.indexer.store import IndexNotFound
    from xmodal.indexer.tuning import RecallNotReached

    setup_logging()
    try:
        report = rebuild(
            index, parse_bytes(budget) if budget else None, recall, latency_ms=latency_ms, key=key, keep=keep
        )
    except (IndexNotFound, NoIndexFits, RecallNotReached, ValueError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"published {report.version} (from {report.source_version.name}) in {report.seconds:.1f}s")
    for name, built in report.built.items():
        measured = (
            f"recall@10 {built.measured_recall_at_10:.3f}, {built.measured_query_ms:.2f} ms a query"
            if built.measured_recall_at_10 is not None
            else "exact"
        )
        typer.echo(
            f"  {name}: {built.key} {built.search_params or '-'} ({measured}; {format_bytes(report.index_bytes[name])})"
        )


# train, eval, demo live in app/cli_models.py (imported here, after setup_logging exists).
from xmodal.app import cli_models  # noqa: E402

cli.command()(cli_models.train)
cli.command("eval")(cli_models.evaluate)
cli.command()(cli_models.demo)


def main() -> None:
    cli()


if __name__ == "__main__":
    sys.exit(main())
