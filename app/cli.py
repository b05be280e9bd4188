"""The `xmodal` command: index, serve."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from models.specs import DEFAULT_SPEC

cli = typer.Typer(
    help="xmodal: index a folder of images, then search it by text or image over HTTP.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_OUR_LOGGERS = ("app", "indexer", "models", "xmodal")


def setup_logging(level: str = "info") -> None:
    """Our loggers at `level`; third-party libraries (open_clip logs to root) at WARNING."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in _OUR_LOGGERS:
        logging.getLogger(name).setLevel(level.upper())


@cli.command()
def index(
    source: Annotated[
        Path, typer.Argument(help="Folder of images (recursive), a .txt/.csv/.parquet list of paths or URLs, or .tar shards")
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
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds per URL request")] = 20.0,
    retries: Annotated[int, typer.Option(min=0, help="Retries per URL on timeouts, connection errors, 5xx")] = 2,
    max_download_bytes: Annotated[int, typer.Option(min=1, help="Largest URL download")] = 50 * 1024 * 1024,
    per_host: Annotated[int, typer.Option(min=1, help="Concurrent downloads per host")] = 4,
    json_output: Annotated[bool, typer.Option("--json", help="Print the build report as JSON (for jobs)")] = False,
) -> None:
    """Embed every image of SOURCE and publish an index version under --out.

    A killed build resumes when the same command is run again."""
    import json

    from indexer.build import BuildConfig, BuildError, build_index, default_workers
    from indexer.download import DownloadConfig
    from models.loading import ModelNotAvailable, ModelSpecError

    setup_logging()
    config = BuildConfig(
        source=source, out=out, model=model, captions=captions, batch_size=batch_size,
        workers=default_workers() if workers is None else workers, device=device, max_pixels=max_pixels,
        keep_versions=keep, progress=progress and not json_output, update=update, draft=draft,
        download=DownloadConfig(timeout_s=timeout, retries=retries, max_bytes=max_download_bytes, per_host=per_host),
    )
    try:
        report = build_index(config)
    except (BuildError, ModelNotAvailable, ModelSpecError, FileNotFoundError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    if json_output:
        typer.echo(json.dumps(report.summary(), indent=2))
        return
    summary = report.summary()
    typer.echo(f"published {report.version}")
    for name in ("indexed", "embedded", "reused", "duplicates", "skipped", "ignored", "captions", "resumed_batches",
                 "embed_seconds", "images_per_s"):
        typer.echo(f"  {name.replace('_', ' '):<16}{summary[name]:>12}")
    for path, reason in sorted(report.skipped.items()):
        typer.echo(f"  skipped {path}: {reason}")


@cli.command()
def serve(
    index: Annotated[Optional[Path], typer.Option(help="Index folder (or XMODAL_INDEX)")] = None,
    host: Annotated[Optional[str], typer.Option(help="Bind address (default 127.0.0.1)")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port (default 8000)")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, cuda:N")] = None,
    model: Annotated[Optional[str], typer.Option(help="Override the manifest's model spec (same weights)")] = None,
) -> None:
    """Serve search over an index. Other settings come from XMODAL_* variables (see README)."""
    import uvicorn

    from app.main import create_app
    from app.settings import Settings

    overrides = {k: v for k, v in {"index": index, "host": host, "port": port, "device": device, "model": model}.items() if v is not None}
    settings = Settings(**overrides)
    if settings.index is None:
        typer.secho("error: give --index DIR (or set XMODAL_INDEX)", fg="red", err=True)
        raise typer.Exit(2)
    setup_logging(settings.log_level)
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level))
    app.state.stop_server = lambda: setattr(server, "should_exit", True)
    server.run()
    runtime = getattr(app.state, "runtime", None)
    if runtime is not None and runtime.error:
        typer.secho(f"error: {runtime.error}", fg="red", err=True)
        raise typer.Exit(1)


def main() -> None:
    cli()


if __name__ == "__main__":
    sys.exit(main())
