"""What every `xmodal` command shares: logging setup and the one error path (`fail`)."""

from __future__ import annotations

import logging
from typing import Annotated, NoReturn

import typer

from xmodal.models.precision import Precision

_OUR_LOGGERS = ("xmodal",)

# Options that several commands take, written once (help text and bounds alike).
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N")]
PrecisionOption = Annotated[Precision, typer.Option(help="Model dtype: auto is fp16 on CUDA, fp32 on the CPU")]
RefusedPixelsOption = Annotated[int, typer.Option(min=1, help="Refuse images with more pixels than this")]
RecallOption = Annotated[float, typer.Option(min=0.01, max=1.0, help="recall@10 target for approximate indexes")]
FillWorkersOption = Annotated[
    int,
    typer.Option(
        min=1,
        help="Processes that fill an IVF index in parallel pieces, merged into the same index "
        "(1: one process; see docs/indexing.md)",
    ),
]
LatencyOption = Annotated[
    float, typer.Option(min=0.0, help="Longest exact (Flat) query before an approximate index is chosen")
]

# Exit code of a refused command (bad option, missing file, unknown model): typer's own usage errors use 2 too.
USAGE_ERROR = 2


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Our loggers at `level`; third-party libraries (open_clip logs to root) at WARNING. fmt: text or json."""
    from xmodal.app.logs import make_handler

    logging.basicConfig(level=logging.WARNING, handlers=[make_handler(fmt)], force=fmt == "json")
    for name in _OUR_LOGGERS:
        logging.getLogger(name).setLevel(level.upper())


def error(message: object) -> None:
    """An `error: ...` line on stderr, for a failure the command goes on after (one bad image of many)."""
    typer.secho(f"error: {message}", fg="red", err=True)


def fail(message: object, code: int = USAGE_ERROR) -> NoReturn:
    """Stop the command: `error: message` on stderr, then exit with `code` (2: the input was refused)."""
    error(message)
    raise typer.Exit(code)
