"""The fast route tier: the real app (`create_app(test_settings)`) through FastAPI's TestClient, in-process.

One session-wide app serves two tiny indexes built here: "default" (the tiny CoCa with captions: captions,
VQA, text search; its items are ids 0..3 = blue, green, grey, red by path, 39 to 41 px wide for filters) and
"clip" (the tiny CLIP, no decoder: the 501s). Building both and loading the models takes a few seconds, once.
"""

from __future__ import annotations

import base64
import io
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from xmodal.app.main import create_app
from xmodal.app.settings import Settings
from xmodal.indexer.build import BuildConfig, build_index
from xmodal.models.encoders import Encoder

COLOURS = {"red.png": (220, 30, 30), "green.png": (30, 200, 40), "blue.png": (30, 40, 220), "grey.png": (128,) * 3}
CAPTIONS = {"red.png": "a red square", "green.png": "a green square", "blue.png": "a blue square"}
LIMITS = {
    "max_upload_bytes": 1_000_000,
    "max_text_chars": 200,
    "max_k": 50,
    "max_offset": 100,
    "max_embed_batch": 8,
    "max_rank_candidates": 8,
    "max_answers": 8,
    "max_caption_tokens": 20,
    "max_alternatives": 3,
    "max_beams": 3,
}


def png_bytes(colour: tuple[int, int, int] = (200, 120, 40), size: int = 24) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = png_bytes()
PNG_B64 = base64.b64encode(PNG).decode()


@pytest.fixture(scope="session")
def route_indexes(tiny_coca_dir, tiny_clip_dir, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("routes")
    photos = root / "photos"
    photos.mkdir()
    for name, colour in COLOURS.items():
        Image.new("RGB", (32 + len(name), 32), colour).save(photos / name)  # wide: red 39, blue and grey 40, green 41
    captions = root / "captions.csv"
    lines = ["image,caption"] + [f"{name},{text}" for name, text in CAPTIONS.items()]
    captions.write_text("\n".join(lines) + "\n")
    built = {}
    for name, model_dir, with_captions in (("default", tiny_coca_dir, True), ("clip", tiny_clip_dir, False)):
        encoder = Encoder.from_spec(f"local-dir:{model_dir}", "cpu")
        config = BuildConfig(
            photos,
            root / name,
            model=f"local-dir:{model_dir}",
            captions=captions if with_captions else None,
            workers=0,
            progress=False,
            device="cpu",
        )
        build_index(config, encoder)
        built[name] = root / name
    return built


@pytest.fixture(scope="session")
def test_settings(route_indexes) -> Settings:
    return Settings(
        index=route_indexes,
        device="cpu",
        threads=1,
        rate_limit_rps=0,
        reload_interval_s=0,
        exit_on_load_failure=False,
        **LIMITS,
    )


@pytest.fixture(scope="session")
def client(test_settings):
    with TestClient(create_app(test_settings), raise_server_exceptions=False) as http:
        deadline = time.monotonic() + 120
        while http.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, http.get("/readyz").json()
            time.sleep(0.05)
        yield http
