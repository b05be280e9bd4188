"""`xmodal demo` (app/cli/demo.py) in-process: tiny CoCa, a few steps, no server (--no-serve)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tests.conftest import TINY_DEMO_ARGS
from xmodal.app.cli import cli


@pytest.mark.slow
def test_demo_prepares_once_then_reuses_model_scenes_and_index(tmp_path):
    args = ("demo", "--cache-dir", tmp_path, *TINY_DEMO_ARGS, "--no-serve")
    first = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert "training xmodal-tiny-coca" in first.output and "indexed 12 scenes and 60 captions" in first.output
    assert "/v1/search/text" in first.output and (tmp_path / "demo-scenes" / "images").is_dir()
    again = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert "reusing the model" in again.output and "reusing the index" in again.output
    assert "training" not in again.output
