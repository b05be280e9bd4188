"""Settings for several indexes (XMODAL_INDEX as a path or a JSON object); `xmodal serve --index`: tests/unit/app/cli."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

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


def test_xmodal_precision_is_one_of_the_indexers_choices(monkeypatch):
    assert Settings().precision == "auto"  # fp16 on CUDA, fp32 on the CPU (models.precision)
    monkeypatch.setenv("XMODAL_PRECISION", "bf16")
    assert Settings().precision == "bf16"
    monkeypatch.setenv("XMODAL_PRECISION", "fp8")
    with pytest.raises(ValidationError, match="precision"):
        Settings()
