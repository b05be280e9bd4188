"""The `xmodal` command: one Typer app, one module per command group.

index.py (index, reindex), serve.py, generate.py (caption, ask), training.py (train, eval), demo.py; common.py
holds what they share (logging setup, `fail`). Each module imports its heavy dependencies inside its commands,
so `xmodal --help` loads neither torch nor faiss, and serve.py never imports training code.
"""

from __future__ import annotations

import os

# Before torch loads its OpenMP runtime: idle OpenMP threads sleep instead of spinning. The model shares
# the cores with the event loop, decode threads and often other processes, and spinning threads there
# made one batch-1 text encode 17x slower (750 ms vs 43 ms, 2 cores, a training job running beside it).
# An OMP_WAIT_POLICY already set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer  # noqa: E402

from xmodal.app.cli import demo, generate, index, serve, training  # noqa: E402

cli = typer.Typer(
    help="xmodal: index a folder of images, then search it by text or image over HTTP.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# In the order `xmodal --help` lists them.
cli.command()(index.index)
cli.command()(serve.serve)
cli.command()(generate.caption)
cli.command()(generate.ask)
cli.command()(index.reindex)
cli.command()(training.train)
cli.command("eval")(training.evaluate)
cli.command()(demo.demo)


def main() -> None:
    cli()
