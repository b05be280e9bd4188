from pathlib import Path

import pytest

from xmodal.models.specs import ModelSpec, SpecKind, parse_spec


@pytest.mark.parametrize(
    "text, kind, arch, source",
    [
        ("ViT-B-32:laion2b_s34b_b79k", SpecKind.PRETRAINED, "ViT-B-32", "laion2b_s34b_b79k"),
        ("coca_ViT-B-32:laion2b_s13b_b90k", SpecKind.PRETRAINED, "coca_ViT-B-32", "laion2b_s13b_b90k"),
        (
            "hf-hub:laion/CoCa-ViT-B-32-laion2B-s13B-b90k",
            SpecKind.HF_HUB,
            None,
            "laion/CoCa-ViT-B-32-laion2B-s13B-b90k",
        ),
        ("local-dir:/models/mine", SpecKind.LOCAL_DIR, None, "/models/mine"),
        ("/models/mine/", SpecKind.LOCAL_DIR, None, "/models/mine"),
        ("ViT-B-32:/w/ckpt.safetensors", SpecKind.CHECKPOINT, "ViT-B-32", "/w/ckpt.safetensors"),
        ("ViT-B-32:/w/ckpt.pt", SpecKind.CHECKPOINT, "ViT-B-32", "/w/ckpt.pt"),
        ("xmodal-tiny-coca", SpecKind.RANDOM, "xmodal-tiny-coca", None),
    ],
)
def test_every_spec_form_parses_and_round_trips(text, kind, arch, source):
    spec = parse_spec(text)
    assert (spec.kind, spec.arch, spec.source) == (kind, arch, source)
    assert parse_spec(str(spec)) == spec


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_spec("./mine").source == str(tmp_path / "mine")
    assert parse_spec("ViT-B-32:weights.bin").source == str(tmp_path / "weights.bin")


@pytest.mark.parametrize("bad", ["", "  ", "hf-hub:onlyorg", "ViT-B-32:", "local-dir:"])
def test_malformed_specs_are_refused(bad):
    with pytest.raises(ValueError):
        parse_spec(bad)


def test_model_id_is_filesystem_safe():
    model_id = ModelSpec(SpecKind.HF_HUB, None, "org/repo").model_id
    assert "/" not in model_id and ":" not in model_id
    assert Path(model_id).name == model_id
