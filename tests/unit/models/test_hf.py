"""Transformers CLIP and SigLIP checkpoints (models/hf.py) against Transformers' own processor + model."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import COCO_MINI, requires_data
from xmodal.app.testing import fill_hub_cache
from xmodal.models.encoders import Encoder
from xmodal.models.generation import Captioner, DecoderUnavailable
from xmodal.models.hf import HfEncoder, is_hf_spec, unpack_patches
from xmodal.models.images import load_image
from xmodal.models.loading import ModelNotAvailable, ModelSpecError, load_model
from xmodal.models.specs import SpecKind, parse_spec

TEXTS = ["a photo of a cat", "a dog on the grass", "一只猫坐在沙发上", "two people riding horses on a beach"]
CHECKPOINTS = ["tiny_hf_clip_dir", "tiny_hf_siglip_dir", "tiny_hf_siglip2_dir"]


@pytest.fixture(scope="module", params=CHECKPOINTS)
def checkpoint(request) -> Path:
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def encoder(checkpoint) -> Encoder:
    return Encoder.from_spec(str(checkpoint), "cpu")


def _reference(folder: Path, images=None, texts=None, pil_backend: bool = False) -> np.ndarray:
    """Unit vectors from Transformers' own pipeline: AutoProcessor (or its PIL image processor) + AutoModel."""
    import transformers

    model = transformers.AutoModel.from_pretrained(folder).eval()
    processor = transformers.AutoProcessor.from_pretrained(folder)
    with torch.no_grad():
        if images is not None:
            image_processor = processor.image_processor
            if pil_backend:
                image_processor = getattr(transformers, type(image_processor).__name__ + "Pil").from_pretrained(folder)
            output = model.get_image_features(**image_processor(images=images, return_tensors="pt"))
        else:
            padding = "max_length" if model.config.model_type != "clip" else True
            length = model.config.text_config.max_position_embeddings
            tokens = processor(text=texts, padding=padding, truncation=True, max_length=length, return_tensors="pt")
            output = model.get_text_features(**tokens)
    features = output if isinstance(output, torch.Tensor) else output.pooler_output
    return torch.nn.functional.normalize(features, dim=-1).numpy()


def test_specs_name_transformers_checkpoints(tiny_hf_clip_dir, tiny_clip_dir):
    spec = parse_spec("hf:google/siglip-base-patch16-224")
    assert (spec.kind, spec.source, str(spec)) == (
        SpecKind.HF,
        "google/siglip-base-patch16-224",
        "hf:google/siglip-base-patch16-224",
    )
    assert parse_spec(str(spec)) == spec and spec.model_id == "hf__google_siglip-base-patch16-224"
    with pytest.raises(ValueError, match="hf:org/repo"):
        parse_spec("hf:onlyorg")
    assert is_hf_spec(str(tiny_hf_clip_dir)) and is_hf_spec(f"local-dir:{tiny_hf_clip_dir}")
    assert not is_hf_spec(f"local-dir:{tiny_clip_dir}") and not is_hf_spec("xmodal-tiny-clip")
    with pytest.raises(ModelSpecError, match="Transformers"):
        load_model(str(tiny_hf_clip_dir), "cpu")


def test_encoder_contract(encoder, checkpoint):
    assert isinstance(encoder, HfEncoder) and encoder.spec == f"local-dir:{checkpoint}"
    assert encoder.patches == (encoder.loaded.model.config.model_type == "siglip2")
    assert encoder.fingerprint.startswith("sha256:") and encoder.image_weights == "fp32"
    image_emb = encoder.embed_images([Image.new("RGB", (50, 30), (200, 10, 10))])
    text_emb = encoder.encode_texts(TEXTS)
    for emb in (image_emb, text_emb):
        assert emb.dtype == np.float32 and emb.shape[1] == encoder.embed_dim
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # The same weights give the same fingerprint however they are named.
    assert Encoder.from_spec(f"local-dir:{checkpoint}", "cpu").fingerprint == encoder.fingerprint


@requires_data(COCO_MINI)
def test_image_parity_with_transformers_pipeline(encoder, checkpoint):
    photos = [load_image(path) for path in sorted((COCO_MINI / "images").glob("*.jpg"))[:4]]
    ours = encoder.embed_images(photos)
    for pil_backend in (False, True):  # transformers 5's default (torchvision) and its PIL image processor
        cosine = (ours * _reference(checkpoint, images=photos, pil_backend=pil_backend)).sum(axis=1)
        assert cosine.min() >= 0.9999, (pil_backend, cosine)


def test_pixels_equal_transformers_pil_processor_for_odd_sizes(encoder, checkpoint):
    import transformers

    rng = np.random.default_rng(0)
    sizes = [(40, 61), (70, 33), (32, 32), (17, 9)]  # (17, 9): smaller than the crop, padded as transformers does
    images = [Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)) for h, w in sizes]
    name = type(transformers.AutoImageProcessor.from_pretrained(checkpoint)).__name__ + "Pil"
    expected = getattr(transformers, name).from_pretrained(checkpoint)(images=images, return_tensors="pt")
    ours = torch.stack([encoder.preprocess_image(image) for image in images])
    if encoder.patches:  # SigLIP 2 NaFlex: patches, mask and grid packed in one tensor per image
        for name, value in unpack_patches(ours).items():
            torch.testing.assert_close(value, expected[name].to(value.dtype), atol=1e-5, rtol=0)
    else:
        torch.testing.assert_close(ours, expected["pixel_values"], atol=1e-5, rtol=0)


def test_text_parity_with_transformers_pipeline(encoder, checkpoint):
    cosine = (encoder.encode_texts(TEXTS) * _reference(checkpoint, texts=TEXTS)).sum(axis=1)
    assert cosine.min() >= 0.9999, cosine


def test_padding_follows_the_family(tiny_hf_clip_dir, tiny_hf_siglip_dir):
    clip = Encoder.from_spec(str(tiny_hf_clip_dir), "cpu").tokenize(["a cat", "a dog on the grass"])
    siglip = Encoder.from_spec(str(tiny_hf_siglip_dir), "cpu").tokenize(["a cat"])
    assert clip["input_ids"].shape[1] < 77  # CLIP: to the longest text
    assert siglip["input_ids"].shape[1] == 16  # SigLIP: to max_length, as it was trained


def test_chinese_query_reaches_the_model_as_its_own_token_ids(tiny_hf_siglip_dir):
    from transformers import AutoTokenizer

    query = "一只猫坐在沙发上"
    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_siglip_dir)
    expected = tokenizer([query], padding="max_length", max_length=16)["input_ids"][0]
    assert tokenizer.unk_token_id not in expected and tokenizer.decode(expected, skip_special_tokens=True) == query
    encoder = Encoder.from_spec(str(tiny_hf_siglip_dir), "cpu")
    seen = []
    hook = encoder.model.text_model.embeddings.register_forward_hook(
        lambda _m, args, kwargs, _out: seen.append(kwargs.get("input_ids", args[0] if args else None)), with_kwargs=True
    )
    try:
        encoder.encode_texts([query])
    finally:
        hook.remove()
    assert seen[0].tolist() == [expected]


def test_contrastive_vqa_and_no_captions(tiny_hf_clip_dir):
    encoder = Encoder.from_spec(str(tiny_hf_clip_dir), "cpu")
    captioner = Captioner(encoder)
    assert not captioner.can_generate
    pixels = encoder.preprocess_image(Image.new("RGB", (40, 40), (10, 10, 220)))
    answer = captioner.answer(pixels, "what colour?", ["blue", "red"])
    assert answer.method == "contrastive" and set(answer.scores or {}) == {"blue", "red"}
    with pytest.raises(DecoderUnavailable):
        captioner.caption(pixels[None])
    with pytest.raises(ValueError, match="int8"):
        Encoder.from_spec(str(tiny_hf_clip_dir), "cpu", int8_text=True)


def test_hub_repo_from_a_filled_cache_offline(tiny_hf_siglip_dir, tmp_path):
    files = {path.name: path for path in tiny_hf_siglip_dir.iterdir()}
    fill_hub_cache(tmp_path, "xmodal-test/tiny-siglip", files)
    hub = Encoder.from_spec("hf:xmodal-test/tiny-siglip", "cpu", offline=True, cache_dir=str(tmp_path))
    local = Encoder.from_spec(str(tiny_hf_siglip_dir), "cpu")
    assert hub.spec == "hf:xmodal-test/tiny-siglip" and hub.fingerprint == local.fingerprint
    np.testing.assert_allclose(hub.encode_texts(TEXTS), local.encode_texts(TEXTS), atol=1e-6)


def test_offline_missing_repo_fails_fast_saying_how(tmp_path):
    started = time.perf_counter()
    with pytest.raises(ModelNotAvailable, match="offline mode.*org/absent.*hf download org/absent"):
        Encoder.from_spec("hf:org/absent", "cpu", offline=True, cache_dir=str(tmp_path))
    assert time.perf_counter() - started < 5


def test_folder_without_image_rules_or_of_another_type_is_refused(tiny_hf_clip_dir, tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelSpecError, match="model_type 'bert'.*clip, siglip, siglip2"):
        Encoder.from_spec(str(tmp_path), "cpu")
    (tmp_path / "config.json").write_bytes((tiny_hf_clip_dir / "config.json").read_bytes())
    with pytest.raises(ModelNotAvailable, match="preprocessor_config.json"):
        Encoder.from_spec(str(tmp_path), "cpu")


def test_without_transformers_the_spec_says_how_to_install(tiny_hf_clip_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    with pytest.raises(ModelNotAvailable, match=r"pip install 'xmodal\[hf\]'"):
        Encoder.from_spec(str(tiny_hf_clip_dir), "cpu")


def test_default_path_does_not_import_transformers():
    code = (
        "import sys, xmodal.app.main, xmodal.indexer.build, xmodal.models.encoders, xmodal.models.hf; "
        "assert 'transformers' not in sys.modules, 'imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
