"""`xmodal index` (embed a source and publish an index version) and `xmodal reindex` (rebuild its FAISS indexes).

Indexer and model code is imported inside the commands, so `xmodal --help` loads neither torch nor faiss.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer

from xmodal.app.cli.common import (
    DeviceOption,
    FillWorkersOption,
    LatencyOption,
    PrecisionOption,
    RecallOption,
    fail,
    setup_logging,
)
from xmodal.indexer.selection import DEFAULT_LATENCY_MS
from xmodal.models.images import DEFAULT_MAX_PIXELS
from xmodal.models.specs import DEFAULT_SPEC

# The report lines `xmodal index` prints, in order (keys of BuildReport.summary()).
_SUMMARY_LINES = (
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
)


def index(
    source: Annotated[
        Path,
        typer.Argument(help="Folder of images (recursive), a .txt/.csv/.parquet list of paths or URLs, or .tar shards"),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Index folder; each build publishes a new version in it")],
    model: Annotated[str, typer.Option(help="Model spec (see docs/models.md)")] = DEFAULT_SPEC,
    captions: Annotated[
        Optional[Path], typer.Option(help="CSV of image,caption rows: enables image→text search")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model batch")] = 64,
    workers: Annotated[Optional[int], typer.Option(min=0, help="Decode worker processes (default: cores-1)")] = None,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "auto",
    gpu_decode: Annotated[
        Optional[bool],
        typer.Option(
            "--gpu-decode/--no-gpu-decode",
            help="Decode plain JPEGs in batches on the model's device (nvJPEG), other files on the CPU as usual "
            "(default: on when the model runs on CUDA; not with --ray)",
            show_default=False,
        ),
    ] = None,
    max_pixels: Annotated[int, typer.Option(min=1, help="Skip images with more pixels than this")] = DEFAULT_MAX_PIXELS,
    keep: Annotated[int, typer.Option(min=1, help="Versions to keep in the index folder")] = 3,
    progress: Annotated[bool, typer.Option(help="Show progress bars")] = True,
    update: Annotated[
        bool, typer.Option(help="Reuse vectors of unchanged files (same path and sha256) from the published version")
    ] = False,
    draft: Annotated[
        bool, typer.Option(help="Decode large JPEGs at reduced size (faster, see docs/indexing.md)")
    ] = True,
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
    recall: RecallOption = 0.95,
    latency_ms: LatencyOption = DEFAULT_LATENCY_MS,
    fill_workers: FillWorkersOption = 1,
    int8_images: Annotated[
        bool,
        typer.Option(
            "--int8-images",
            help="CPU: run the image tower with int8 weight copies (about 2x "
            "faster; worst cosine to fp32 vectors measured 0.99989, see docs/indexing.md)",
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
        fill_workers=fill_workers,
        int8_images=int8_images,
        precision=precision,
        gpu_decode=gpu_decode,
    )
    try:
        # --json: the report is the only thing on stdout; anything else printed meanwhile (Ray prints a lost
        # node's retried tasks to the driver's stdout) goes to stderr.
        with _stdout_to_stderr() if json_output else contextlib.nullcontext():
            if ray:
                from xmodal.indexer.distributed import RayOptions, build_index_on_ray

                report = build_index_on_ray(config, RayOptions(ray, ray_actors, ray_part_size))
            else:
                report = build_index(config)
    except (BuildError, ModelNotAvailable, ModelSpecError, FileNotFoundError, ValueError, RecallNotReached) as exc:
        fail(exc)
    if json_output:
        typer.echo(json.dumps(report.summary(), indent=2))
        return
    summary = report.summary()
    typer.echo(f"published {report.version}")
    for name in _SUMMARY_LINES:
        typer.echo(f"  {name.replace('_', ' '):<16}{summary[name]:>12}")
    for name, described in report.indexes.items():
        typer.echo(f"  {name + ' index':<16}{described:>12}")
    for path, reason in sorted(report.skipped.items()):
        typer.echo(f"  skipped {path}: {reason}")


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """File descriptor 1 pointed at stderr for the duration, so that output of C code and threads moves too."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def reindex(
    index: Annotated[Path, typer.Argument(help="Index folder (with CURRENT)")],
    budget: Annotated[
        Optional[str],
        typer.Option(help="Memory for all FAISS indexes of the version: 2GB, 512MiB, ... (default: no limit)"),
    ] = None,
    recall: RecallOption = 0.95,
    latency_ms: LatencyOption = DEFAULT_LATENCY_MS,
    key: Annotated[
        Optional[str], typer.Option(help="Build this faiss index_factory key instead of choosing one")
    ] = None,
    keep: Annotated[int, typer.Option(min=1, help="Versions to keep in the index folder")] = 3,
    fill_workers: FillWorkersOption = 1,
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
            index,
            parse_bytes(budget) if budget else None,
            recall,
            latency_ms=latency_ms,
            key=key,
            keep=keep,
            fill_workers=fill_workers,
        )
    except (IndexNotFound, NoIndexFits, RecallNotReached, ValueError) as exc:
        fail(exc)
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
