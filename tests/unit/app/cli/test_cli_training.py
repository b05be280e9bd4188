"""`xmodal train` and `xmodal eval` (app/cli/training.py) in-process, on the tiny CoCa and a few generated scenes."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from xmodal.app.cli import cli
from xmodal.models.loading import load_model

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result


WORLD_TRAIN = (
    "--scenes",
    32,
    "--model",
    "xmodal-tiny-coca",
    "--steps",
    4,
    "--batch-size",
    8,
    "--warmup",
    1,
    "--threads",
    1,
    "--eval-scenes",
    10,
    "--decoder-targets",
    2,
    "--query-fraction",
    0.5,
    "--hard-negatives",
    1,
    "--presence-weight",
    3,
    "--workers",
    0,
    "--checkpoint-every",
    2,
    "--no-progress",
)


@pytest.fixture(scope="module")
def world_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("world-train") / "model"
    result = invoke("train", "--out", out, *WORLD_TRAIN)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_train_on_the_world_writes_a_loadable_model_and_evaluates_it(world_model):
    out, output = world_model
    loaded = load_model(f"local-dir:{out}", "cpu")
    assert loaded.has_decoder and loaded.model_cfg["embed_dim"] == 32
    record = json.loads((out / "training.json").read_text())
    assert record["steps"] == 4 and record["evaluations"][-1]["step"] == 4
    assert record["trajectory"]["presence_weight"] == "3.0"  # --presence-weight reached the config
    assert "caption exact match" in output and "image→text recall" in output
    assert f"local-dir:{out.resolve()}" in output


def test_rerunning_train_resumes_from_its_checkpoints(world_model):
    out, _ = world_model
    again = invoke("train", "--out", out, *WORLD_TRAIN, "--no-evaluate")
    assert again.exit_code == 0, again.output
    assert "trained 4 steps (0 in this run" in again.output
    longer = invoke("train", "--out", out, *WORLD_TRAIN, "--no-evaluate", "--steps", 5)
    assert longer.exit_code == 2 and "steps" in longer.output  # other settings: refused, not mixed


def test_train_continues_from_a_trained_model_spec(world_model, tmp_path):
    out, _ = world_model
    result = invoke(
        "train",
        "--out",
        tmp_path / "tuned",
        "--scenes",
        32,
        "--model",
        f"local-dir:{out}",
        "--steps",
        2,
        "--batch-size",
        8,
        "--warmup",
        0,
        "--threads",
        1,
        "--workers",
        0,
        "--no-evaluate",
        "--no-progress",
    )
    assert result.exit_code == 0, result.output
    tuned = load_model(f"local-dir:{tmp_path / 'tuned'}", "cpu")
    assert tuned.model_cfg == load_model(f"local-dir:{out}", "cpu").model_cfg
    assert tuned.fingerprint != load_model(f"local-dir:{out}", "cpu").fingerprint


def test_eval_world_writes_json_and_png(world_model, tmp_path):
    out, _ = world_model
    result = invoke(
        "eval",
        "--model",
        f"local-dir:{out}",
        "--scenes",
        20,
        "--queries",
        20,
        "--captions",
        4,
        "--questions-per-type",
        2,
        "--out",
        tmp_path,
        "--device",
        "cpu",
        "--threads",
        1,
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval.json").read_text())["world"]
    metrics = report["metrics"]
    for key in (
        "t2i_p@1",
        "t2i_p@5",
        "i2t_r@1",
        "i2t_r@5",
        "caption_exact",
        "caption_f1",
        "vqa_generated_colour",
        "vqa_ranked_all",
    ):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert report["counts"]["captioned"] == 4 and report["counts"]["questions"] == 12
    assert (tmp_path / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "VQA accuracy" in result.output


def test_cli_errors_are_readable(tmp_path):
    no_target = invoke("eval", "--out", tmp_path)
    assert no_target.exit_code == 2 and "--model" in no_target.output
    bad_data = invoke("train", "--out", tmp_path / "m", "--data", tmp_path / "missing.csv")
    assert bad_data.exit_code == 2 and "is not a file" in bad_data.output
    bad_model = invoke("train", "--out", tmp_path / "m", "--model", "no-such-arch", "--steps", 1, "--no-progress")
    assert bad_model.exit_code == 2 and "no-such-arch" in bad_model.output
    assert "--data" in invoke("train", "--help").output
