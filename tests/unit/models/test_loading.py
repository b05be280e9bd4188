import time

import open_clip
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import COCO_MINI, TINY_CLIP, TINY_COCA, requires_data
from xmodal.app.testing import fill_hub_cache
from xmodal.models.loading import ModelNotAvailable, ModelSpecError, load_model

TAG_REPO = "xmodal-test/tiny-coca-tagged"


@pytest.fixture
def tiny_tag(monkeypatch):
    """A pretrained tag for the tiny CoCa, pointing at a hub repo, like open_clip's own tags."""
    from open_clip import pretrained

    tag_cfg = pretrained._pcfg(hf_hub=f"{TAG_REPO}/", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    monkeypatch.setitem(pretrained._PRETRAINED, TINY_COCA, {"testtag": tag_cfg})
    return "testtag"


def test_bare_name_gives_the_same_random_weights_every_time():
    first, second = load_model(TINY_COCA, "cpu"), load_model(TINY_COCA, "cpu")
    assert first.fingerprint == second.fingerprint
    assert torch.isfinite(first.model.text_decoder.text_projection).all()  # open_clip leaves it torch.empty
    assert first.has_decoder and not load_model(TINY_CLIP, "cpu").has_decoder
    assert (first.device.type, first.dtype, first.embed_dim, first.context_length) == ("cpu", torch.float32, 32, 32)


def test_local_dir_loads_the_saved_weights_and_preprocessing(tiny_coca_dir):
    loaded = load_model(f"local-dir:{tiny_coca_dir}", "cpu")
    assert loaded.fingerprint == load_model(TINY_COCA, "cpu").fingerprint
    assert loaded.preprocess_cfg["size"] == (32, 32)
    assert str(loaded.spec) == f"local-dir:{tiny_coca_dir}"
    assert load_model(str(tiny_coca_dir), "cpu").fingerprint == loaded.fingerprint  # a bare path works too


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".bin"])
def test_name_plus_checkpoint_file(tiny_coca_dir, tmp_path, suffix):
    state = load_file(tiny_coca_dir / "open_clip_model.safetensors")
    checkpoint = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        (checkpoint).write_bytes((tiny_coca_dir / "open_clip_model.safetensors").read_bytes())
    else:
        torch.save({"state_dict": state} if suffix == ".pt" else state, checkpoint)
    loaded = load_model(f"{TINY_COCA}:{checkpoint}", "cpu")
    assert loaded.fingerprint == load_model(TINY_COCA, "cpu").fingerprint


def test_checkpoint_takes_the_architectures_published_preprocessing(tiny_coca_dir, tiny_tag):
    loaded = load_model(f"{TINY_COCA}:{tiny_coca_dir / 'open_clip_model.safetensors'}", "cpu")
    assert tuple(loaded.preprocess_cfg["mean"]) == (0.5, 0.5, 0.5)


def test_pretrained_tag_from_a_filled_hub_cache_offline(tiny_coca_dir, tiny_tag, tmp_path):
    fill_hub_cache(tmp_path, TAG_REPO, {"open_clip_model.safetensors": tiny_coca_dir / "open_clip_model.safetensors"})
    loaded = load_model(f"{TINY_COCA}:{tiny_tag}", "cpu", offline=True, cache_dir=str(tmp_path))
    assert loaded.fingerprint == load_model(TINY_COCA, "cpu").fingerprint
    assert tuple(loaded.preprocess_cfg["mean"]) == (0.5, 0.5, 0.5)  # the tag's preprocessing travels with it


def test_hf_hub_repo_from_a_filled_cache_offline(tiny_coca_dir, tmp_path):
    fill_hub_cache(
        tmp_path,
        "xmodal-test/tiny-coca",
        {name: tiny_coca_dir / name for name in ("open_clip_config.json", "open_clip_model.safetensors")},
    )
    loaded = load_model("hf-hub:xmodal-test/tiny-coca", "cpu", offline=True, cache_dir=str(tmp_path))
    assert loaded.fingerprint == load_model(TINY_COCA, "cpu").fingerprint
    assert str(loaded.spec) == "hf-hub:xmodal-test/tiny-coca"


@pytest.mark.parametrize("env", ["XMODAL_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_missing_weights_fail_fast_naming_the_files(tmp_path, monkeypatch, env):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv(env, "1")
    started = time.perf_counter()
    with pytest.raises(ModelNotAvailable) as error:
        load_model("coca_ViT-B-32:laion2b_s13b_b90k", "cpu", cache_dir=str(tmp_path))
    assert time.perf_counter() - started < 1.0
    message = str(error.value)
    assert "laion/CoCa-ViT-B-32-laion2B-s13B-b90k" in message
    assert "open_clip_model.safetensors" in message and "open_clip_pytorch_model.bin" in message
    assert "hf download" in message and str(tmp_path) in message


def test_offline_hf_hub_without_cache_names_the_config(tmp_path):
    with pytest.raises(ModelNotAvailable, match="open_clip_config.json"):
        load_model("hf-hub:org/absent", "cpu", offline=True, cache_dir=str(tmp_path))


def test_unknown_architecture_tag_and_missing_paths_are_clear(tmp_path):
    with pytest.raises(ModelSpecError, match="unknown open_clip architecture"):
        load_model("ViT-Nope-99", "cpu")
    with pytest.raises(ModelSpecError, match="known tags: .*laion2b_s34b_b79k"):
        load_model("ViT-B-32:no_such_tag", "cpu")
    with pytest.raises(ModelNotAvailable, match="checkpoint file not found"):
        load_model(f"{TINY_COCA}:{tmp_path / 'absent.safetensors'}", "cpu")
    with pytest.raises(ModelNotAvailable, match="open_clip_config.json"):
        load_model(f"local-dir:{tmp_path}", "cpu")


@requires_data(COCO_MINI)
def test_encoder_matches_open_clips_reference_pipeline(tiny_coca_dir):
    """The embedding parity bound: our encode == open_clip's own preprocess + encode (cos >= 0.9999)."""
    from PIL import Image

    from xmodal.models.encoders import Encoder
    from xmodal.models.images import load_image

    photo = next(iter(sorted((COCO_MINI / "images").glob("*.jpg"))))
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tiny_coca_dir}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tiny_coca_dir}")
    model.eval()
    with torch.no_grad():
        ref_image = model.encode_image(preprocess(Image.open(photo).convert("RGB"))[None], normalize=True)[0]
        ref_text = model.encode_text(tokenizer(["two dogs on a beach"]), normalize=True)[0]
    encoder = Encoder.from_spec(f"local-dir:{tiny_coca_dir}", "cpu")
    ours_image = torch.from_numpy(encoder.embed_images([load_image(photo)])[0])
    ours_text = torch.from_numpy(encoder.encode_texts(["two dogs on a beach"])[0])
    assert torch.dot(ours_image, ref_image) >= 0.9999
    assert torch.dot(ours_text, ref_text) >= 0.9999
    assert abs(ours_image.norm() - 1) < 1e-5 and abs(ours_text.norm() - 1) < 1e-5


def test_online_without_a_reachable_hub_fails_fast(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    started = time.perf_counter()
    with pytest.raises(ModelNotAvailable, match="cannot be reached.*XMODAL_OFFLINE=1"):
        load_model("coca_ViT-B-32:laion2b_s13b_b90k", "cpu", offline=False, cache_dir=str(tmp_path))
    assert time.perf_counter() - started < 5
