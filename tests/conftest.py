"""Shared fixtures: tiny real open_clip models saved in every on-disk format we load.

Also two rules for every test: a test marked `requires_data(path)` fails (never skips) when the shared data
folder is missing, saying where it should be; every test under tests/e2e carries the `e2e` marker.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

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
# `xmodal demo` at its smallest: the tiny CoCa, 2 steps, 12 scenes, on one CPU thread.
TINY_DEMO_ARGS = (
    "--model",
    TINY_COCA,
    "--steps",
    2,
    "--scenes",
    12,
    "--threads",
    1,
    "--eval-scenes",
    10,
    "--device",
    "cpu",
)

# Files in images-edge that no decoder can (or should) turn into a picture.
EDGE_UNDECODABLE = {
    "broken.png": "not a recognised image format",
    "sgi_crash.bin": "not a recognised image format",  # an SGI crash file; SGI is not on our allowlist
    "truncated_image.png": "truncated",
    "truncated_jpeg.jpg": "truncated",
    "ultrahdr.jpg": "truncated",  # the file is cut short: Pillow reads 0 bytes of its scan data
    "decompression_bomb.gif": "decompression bomb",
}


def requires_data(*paths: Path) -> pytest.MarkDecorator:
    """Mark a test (or a module, via pytestmark) that reads these ../shared/data folders."""
    return pytest.mark.requires_data(*paths)


def missing_data(path: Path) -> NoReturn:
    """Fail the test: a missing data folder is a broken checkout, not a reason to skip."""
    pytest.fail(
        f"{path} is missing: tests read real data from {SHARED_DATA} (../shared/data beside the repository root). "
        f"Link or copy the shared data folder there (ln -s /path/to/shared/data {SHARED_DATA}), then rerun.",
        pytrace=False,
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before any fixture runs: fail a test whose data folder is missing."""
    for marker in item.iter_markers("requires_data"):
        for path in marker.args:
            if not Path(path).is_dir():
                missing_data(path)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/e2e is an e2e test, whether or not its module says so."""
    e2e = ROOT / "tests" / "e2e"
    for item in items:
        if item.path.is_relative_to(e2e):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def tiny_coca_dir(tmp_path_factory) -> Path:
    """The tiny CoCa with seeded random weights, saved as an open_clip local-dir."""
    return _save_local_dir(TINY_COCA, tmp_path_factory.mktemp("tiny-coca"))


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    return _save_local_dir(TINY_CLIP, tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def tiny_bilingual_coca_dir(tmp_path_factory) -> Path:
    """The tiny CoCa, random weights, with a world tokenizer and both languages recorded, as training writes it."""
    import torch

    from xmodal.models.languages import LANGUAGE_PROMPTS
    from xmodal.models.model_dir import save_model_dir
    from xmodal.models.training.starting_model import load_starting_model
    from xmodal.models.training.tokenizer import train_world_tokenizer

    tokenizer = train_world_tokenizer(("en", "zh"), scenes=60)  # every world word appears in 60 scenes
    start = load_starting_model(TINY_COCA, None, torch.device("cpu"), tokenizer=tokenizer)
    folder = tmp_path_factory.mktemp("tiny-bilingual-coca")
    return save_model_dir(
        start.model, start.model_cfg, start.preprocess_cfg, folder, tokenizer=tokenizer, languages=LANGUAGE_PROMPTS
    )


def _save_local_dir(arch: str, folder: Path) -> Path:
    import open_clip

    from xmodal.models.loading import load_model
    from xmodal.models.model_dir import save_model_dir

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
