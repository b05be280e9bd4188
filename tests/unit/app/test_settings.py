"""Settings for several indexes (XMODAL_INDEX as a path or a JSON object) and `xmodal serve --index`."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import uvicorn
from pydantic import ValidationError
from typer.testing import CliRunner

from xmodal.app.cli import _parse_index_options, cli
from xmodal.app.settings import Settings


def test_xmodal_index_is_a_path_or_a_json_object_of_named_paths(monkeypatch):
    monkeypatch.setenv("XMODAL_INDEX", "/data/index")
    assert Settings().indexes == {"default": Path("/data/index")}
    monkeypatch.setenv("XMODAL_INDEX", "2024")  # a folder name that is also valid JSON stays a path
    assert Settings().indexes == {"default": Path("2024")}
    monkeypatch.setenv("XMODAL_INDEX", '{"photos": "/data/photos", "docs": "/data/docs"}')
    assert Settings().indexes == {"photos": Path("/data/photos"), "docs": Path("/data/docs")}
    monkeypatch.setenv("XMODAL_INDEX", '{"bad name": "/x"}')
    with pytest.raises(ValidationError, match="index names"):
        Settings()
    monkeypatch.setenv("XMODAL_INDEX", '{"photos": ')
    with pytest.raises(ValidationError, match="not a valid JSON object"):
        Settings()
    monkeypatch.delenv("XMODAL_INDEX")
    assert Settings().indexes == {}


def test_xmodal_model_applies_to_every_index_or_per_name(monkeypatch):
    monkeypatch.setenv("XMODAL_MODEL", "local-dir:/models/a")
    assert Settings().model_for("photos") == "local-dir:/models/a"
    monkeypatch.setenv("XMODAL_MODEL", '{"photos": "local-dir:/models/b"}')
    assert Settings().model_for("photos") == "local-dir:/models/b" and Settings().model_for("docs") is None
    assert Settings(shutdown_grace_s=3).shutdown_grace_s == 3 and Settings().shutdown_grace_s == 30


def test_index_options_bare_named_and_repeated():
    assert _parse_index_options(["/data/index"]) == Path("/data/index")
    assert _parse_index_options(["photos=/a", "docs=/b"]) == {"photos": Path("/a"), "docs": Path("/b")}
    assert _parse_index_options(["/a", "docs=/b"]) == {"default": Path("/a"), "docs": Path("/b")}
    assert _parse_index_options(["./x=1/index"]) == Path("./x=1/index")  # a folder with '=' in its name
    with pytest.raises(ValueError, match="given twice"):
        _parse_index_options(["/a", "/b"])


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
