"""Shared fixtures: tiny real open_clip models saved in every on-disk format we load."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach the network, even by accident.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
COCO_MINI = SHARED_DATA / "coco-mini"
FLICKR_1K = SHARED_DATA / "flickr8k-1k"
IMAGES_EDGE = SHARED_DATA / "images-edge"
TINY_COCA = "xmodal-tiny-coca"
TINY_CLIP = "xmodal-tiny-clip"

# Files in images-edge that no decoder can (or should) turn into a picture.
EDGE_UNDECODABLE = {
    "broken.png": "not a recognised image format",
    "sgi_crash.bin": "not a recognised image format",  # an SGI crash file; SGI is not on our allowlist
    "truncated_image.png": "truncated",
    "truncated_jpeg.jpg": "truncated",
    "ultrahdr.jpg": "truncated",  # the file is cut short: Pillow reads 0 bytes of its scan data
    "decompression_bomb.gif": "decompression bomb",
}


def requires_data(path: Path):
    return pytest.mark.skipif(not path.is_dir(), reason=f"{path} (../shared/data) is not present")


@pytest.fixture(scope="session")
def tiny_coca_dir(tmp_path_factory) -> Path:
    """The tiny CoCa with seeded random weights, saved as an open_clip local-dir."""
    return _save_local_dir(TINY_COCA, tmp_path_factory.mktemp("tiny-coca"))


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    return _save_local_dir(TINY_CLIP, tmp_path_factory.mktemp("tiny-clip"))


def _save_local_dir(arch: str, folder: Path) -> Path:
    import open_clip

    from xmodal.models.export import save_model_dir
    from xmodal.models.loading import load_model

    loaded = load_model(arch, "cpu")
    return save_model_dir(loaded.model, open_clip.get_model_config(arch), loaded.preprocess_cfg, folder)


@pytest.fixture(scope="session")
def tiny_hf_clip_dir(tmp_path_factory) -> Path:
    """A tiny Transformers CLIPModel folder (tests/hf_checkpoints.py); skipped without the hf extra."""
    pytest.importorskip("transformers", reason="the hf extra (pip install 'xmodal[hf]') is not installed")
    from tests.hf_checkpoints import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("hf-clip"))


@pytest.fixture(scope="session")
def tiny_hf_siglip_dir(tmp_path_factory) -> Path:
    """A tiny Transformers SiglipModel folder with a SentencePiece tokenizer (tests/hf_checkpoints.py)."""
    pytest.importorskip("transformers", reason="the hf extra (pip install 'xmodal[hf]') is not installed")
    pytest.importorskip("sentencepiece", reason="SigLIP's tokenizer needs sentencepiece (the hf extra)")
    from tests.hf_checkpoints import save_tiny_siglip

    return save_tiny_siglip(tmp_path_factory.mktemp("hf-siglip"))


@pytest.fixture(scope="session")
def tiny_hf_siglip2_dir(tmp_path_factory) -> Path:
    """A tiny Transformers Siglip2Model (NaFlex: images as patches of their own aspect ratio)."""
    pytest.importorskip("transformers", reason="the hf extra (pip install 'xmodal[hf]') is not installed")
    pytest.importorskip("sentencepiece", reason="the tiny model's tokenizer needs sentencepiece (the hf extra)")
    from tests.hf_checkpoints import save_tiny_siglip2

    return save_tiny_siglip2(tmp_path_factory.mktemp("hf-siglip2"))
