"""`xmodal serve`: the HTTP server over one or more indexes, with a drained shutdown on SIGTERM.

Serving never imports training code: this module reads the server's own settings only.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from xmodal.app.cli.common import fail, setup_logging


def serve(
    index: Annotated[
        Optional[list[str]],
        typer.Option(help="Index folder, or NAME=FOLDER; repeat it to serve several (or XMODAL_INDEX)"),
    ] = None,
    host: Annotated[Optional[str], typer.Option(help="Bind address (default 127.0.0.1)")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port (default 8000)")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, cuda:N")] = None,
    model: Annotated[Optional[str], typer.Option(help="Override the manifest's model spec (same weights)")] = None,
    decoder_rerank: Annotated[
        Optional[int],
        typer.Option(min=0, help="Text searches re-score their first N results with a CoCa's decoder (default 0: off)"),
    ] = None,
) -> None:
    """Serve search over one or more indexes. Other settings come from XMODAL_* variables (see docs/configuration.md).

    On SIGTERM (or Ctrl-C) it stops accepting connections, lets requests in flight finish (at most
    XMODAL_SHUTDOWN_GRACE_S seconds) and exits 0."""
    import uvicorn
    from pydantic import ValidationError

    from xmodal.app.main import create_app
    from xmodal.app.security import InsecureConfig
    from xmodal.app.settings import Settings

    try:
        indexes = parse_index_options(index) if index else None
        overrides: dict[str, Any] = {
            "index": indexes,
            "host": host,
            "port": port,
            "device": device,
            "model": model,
            "decoder_rerank": decoder_rerank,
        }
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except (ValueError, ValidationError) as exc:
        fail(exc)
    if not settings.indexes:
        fail("give --index DIR (or set XMODAL_INDEX)")
    setup_logging(settings.log_level, settings.log_format)
    try:
        app = create_app(settings)
    except InsecureConfig as exc:
        fail(exc)
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
            # uvicorn annotates this int, but any number of seconds works (it goes to asyncio.timeout).
            timeout_graceful_shutdown=settings.shutdown_grace_s,  # type: ignore[arg-type]
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
        fail(runtime.error, code=1)


def parse_index_options(values: list[str]) -> Path | dict[str, Path]:
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
