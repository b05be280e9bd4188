"""The `xmodal` command as a package (app/cli/): one error path, defaults from one place, light imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from xmodal.app.cli import cli, training
from xmodal.app.cli.common import fail
from xmodal.app.settings import Settings
from xmodal.indexer.build import BuildConfig
from xmodal.models.images import DEFAULT_MAX_PIXELS
from xmodal.models.training.recipes import WORLD_RECIPE, world_config

COMMANDS = ("index", "serve", "caption", "ask", "reindex", "train", "eval", "demo")


def _default(command: str, option: str):
    params = typer.main.get_command(cli).commands[command].params  # type: ignore[attr-defined]
    return next(p.default for p in params if p.name == option)


def test_fail_writes_one_error_line_to_stderr_and_exits_2(capsys):
    with pytest.raises(typer.Exit) as exited:
        fail("no such index: /x")
    assert exited.value.exit_code == 2
    assert capsys.readouterr().err == "error: no such index: /x\n"
    with pytest.raises(typer.Exit) as exited:
        fail(ValueError("bad"), code=1)
    assert exited.value.exit_code == 1 and capsys.readouterr().err == "error: bad\n"


def test_every_max_pixels_default_is_the_images_module_constant():
    assert DEFAULT_MAX_PIXELS == 40_000_000
    assert Settings().max_pixels == BuildConfig(source=Path("s"), out=Path("o")).max_pixels == DEFAULT_MAX_PIXELS
    for command in ("index", "caption", "ask"):
        assert _default(command, "max_pixels") == DEFAULT_MAX_PIXELS, command


def test_train_with_no_options_runs_the_world_recipe(monkeypatch, tmp_path):
    seen: dict = {}
    monkeypatch.setattr(training, "run_training", lambda config, hook, progress: seen.setdefault("config", config))
    result = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "m"), "--no-evaluate"])
    config = seen["config"]
    assert config.trajectory() == world_config(tmp_path / "m").trajectory()
    assert (config.num_workers, config.checkpoint_every) == (WORLD_RECIPE.num_workers, WORLD_RECIPE.checkpoint_every)
    assert result.exit_code == 0, result.output  # the stand-in hands back the config, which has an output_dir


def test_python_m_lists_every_command_without_loading_torch_or_training_code():
    code = (
        "import sys, runpy\n"
        "sys.argv = ['xmodal', '--help']\n"
        "try:\n    runpy.run_module('xmodal.app.cli', run_name='__main__')\n"
        "except SystemExit as exit:\n    assert exit.code == 0, exit.code\n"
        "loaded = [m for m in sys.modules if m in ('torch', 'faiss') or m.startswith('xmodal.models.training.')]\n"
        "print('LOADED', sorted(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for command in COMMANDS:
        assert f" {command} " in out, command
    # Only the recipe's plain dataclasses, for `train`'s defaults; the training loop and torch stay unloaded.
    assert "LOADED ['xmodal.models.training.config', 'xmodal.models.training.recipes']" in out
