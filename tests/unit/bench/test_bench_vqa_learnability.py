"""bench/bench_vqa_learnability.py: probes and per-type training run end to end on a tiny patch-token CoCa."""

import importlib.util
import json

import pytest
import torch

from tests.conftest import ROOT, TINY_COCA


def _bench():
    spec = importlib.util.spec_from_file_location(
        "bench_vqa_learnability", ROOT / "bench" / "bench_vqa_learnability.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def patch_token_coca(tmp_path_factory):
    from xmodal.models.model_dir import save_model_dir
    from xmodal.models.training.starting_model import load_starting_model

    torch.manual_seed(0)
    # The decoder must read patch tokens (the world model's layout), not an attentional pooler's.
    start = load_starting_model(
        TINY_COCA, None, torch.device("cpu"), model_overrides=(("vision_cfg.attentional_pool", False),)
    )
    folder = tmp_path_factory.mktemp("patch-token-coca")
    return save_model_dir(start.model, start.model_cfg, start.preprocess_cfg, folder)


def test_probes_and_per_type_curves_are_measured_and_written(patch_token_coca, tmp_path):
    out = tmp_path / "learnability.json"
    argv = [str(patch_token_coca), "--types", "presence,colour", "--steps", "2", "--scenes", "80", "--heldout", "60"]
    result = _bench().main([*argv, "--fresh-decoder", "--output", str(out)])
    assert json.loads(out.read_text()) == result
    assert len(result["probes"]) == 4 and all(0.0 <= v <= 1.0 for v in result["probes"].values())
    assert [row["type"] for row in result["types"]] == ["presence", "colour"]
    for row in result["types"]:
        assert [p["step"] for p in row["curve"]] == [0, 1, 2]
        assert 0.0 < row["prior"] < 1.0 and all(0.0 <= p["heldout_accuracy"] <= 1.0 for p in row["curve"])
        assert row["curve"][0]["heldout_loss"] != row["curve"][-1]["heldout_loss"]  # the decoder did train


def test_a_model_whose_decoder_reads_pooled_tokens_is_refused(tiny_coca_dir, tmp_path):
    with pytest.raises(SystemExit, match="attentional pooler"):
        _bench().main([str(tiny_coca_dir), "--steps", "1", "--output", str(tmp_path / "x.json")])
