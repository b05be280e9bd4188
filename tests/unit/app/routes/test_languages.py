"""`language` on /v1/caption and /v1/vqa, served from a model that writes English and Chinese."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.unit.app.routes.conftest import LIMITS, PNG_B64
from xmodal.app.main import create_app
from xmodal.app.settings import Settings
from xmodal.indexer.build import BuildConfig, build_index
from xmodal.models.encoders import Encoder


@pytest.fixture(scope="module")
def bilingual(tiny_bilingual_coca_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("bilingual-index")
    (root / "photos").mkdir()
    Image.new("RGB", (32, 32), (220, 30, 30)).save(root / "photos" / "red.png")
    spec = f"local-dir:{tiny_bilingual_coca_dir}"
    config = BuildConfig(root / "photos", root / "index", model=spec, workers=0, progress=False, device="cpu")
    build_index(config, Encoder.from_spec(spec, "cpu"))
    settings = Settings(
        index={"default": root / "index"},
        device="cpu",
        threads=1,
        rate_limit_rps=0,
        reload_interval_s=0,
        exit_on_load_failure=False,
        **LIMITS,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as http:
        deadline = time.monotonic() + 120
        while http.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, http.get("/readyz").json()
            time.sleep(0.05)
        yield http


def test_caption_in_each_language_the_model_writes(bilingual):
    for language in ("en", "zh"):
        body = bilingual.post("/v1/caption", json={"image_b64": PNG_B64, "language": language, "max_tokens": 3})
        assert body.status_code == 200, body.text
        assert body.json()["language"] == language
    refused = bilingual.post("/v1/caption", json={"image_b64": PNG_B64, "language": "fr"})
    assert refused.status_code == 422 and "writes en, zh, not 'fr'" in refused.json()["detail"]


def test_an_answer_comes_in_the_question_s_language_unless_another_is_asked(bilingual):
    def ask(question: str, **fields) -> dict:
        response = bilingual.post("/v1/vqa", json={"image_b64": PNG_B64, "question": question, **fields})
        assert response.status_code == 200, response.text
        return response.json()

    assert ask("三角形是什么颜色？", max_tokens=2)["language"] == "zh"
    assert ask("what colour is the triangle?", max_tokens=2)["language"] == "en"
    ranked = ask("what colour is the triangle?", answers=["红色", "蓝色"], language="zh")
    assert ranked["language"] == "zh" and ranked["method"] == "likelihood"


def test_a_chinese_query_searches_with_the_model_s_own_tokenizer(bilingual):
    found = bilingual.post("/v1/search/text", json={"text": "左边一个大的红色圆形", "k": 1})
    assert found.status_code == 200, found.text
    assert len(found.json()["results"]) == 1
