"""`xmodal serve` (app/cli/serve.py): --index options, settings handed to uvicorn, signal handlers put back."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import uvicorn
from typer.testing import CliRunner

from xmodal.app.cli import cli
from xmodal.app.cli.serve import parse_index_options


def test_index_options_bare_named_and_repeated():
    assert parse_index_options(["/data/index"]) == Path("/data/index")
    assert parse_index_options(["photos=/a", "docs=/b"]) == {"photos": Path("/a"), "docs": Path("/b")}
    assert parse_index_options(["/a", "docs=/b"]) == {"default": Path("/a"), "docs": Path("/b")}
    assert parse_index_options(["./x=1/index"]) == Path("./x=1/index")  # a folder with '=' in its name
    with pytest.raises(ValueError, match="given twice"):
        parse_index_options(["/a", "/b"])


def test_serve_passes_the_indexes_and_the_shutdown_grace_to_uvicorn(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(uvicorn.Server, "run", lambda server: seen.update(config=server.config))
    monkeypatch.setenv("XMODAL_SHUTDOWN_GRACE_S", "7")
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    result = CliRunner().invoke(cli, ["serve", "--index", f"a={tmp_path}", "--index", f"b={tmp_path}"])
    assert result.exit_code == 0, result.output
    assert seen["config"].timeout_graceful_shutdown == 7
    assert seen["config"].app.state.settings.indexes == {"a": tmp_path, "b": tmp_path}
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers  # put back after serving
    refused = CliRunner().invoke(cli, ["serve", "--index", f"a={tmp_path}", "--index", f"a={tmp_path}"])
    assert refused.exit_code == 2 and "given twice" in refused.output
