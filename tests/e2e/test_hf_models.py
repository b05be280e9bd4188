"""Transformers checkpoints through the real CLI and server: `xmodal index` then `xmodal serve` with a tiny
CLIP (a local folder) and a tiny SigLIP (`hf:org/repo` from a filled Hugging Face cache, offline)."""

from __future__ import annotations

import base64
import csv
import shutil

import httpx
import numpy as np
import pytest

from tests.conftest import COCO_MINI, requires_data
from xmodal.app.testing import Server, fill_hub_cache, run_xmodal
from xmodal.models.encoders import Encoder
from xmodal.models.images import load_image

pytestmark = [pytest.mark.e2e, requires_data(COCO_MINI)]
PHOTOS = ["000000000139.jpg", "000000000790.jpg", "000000000802.jpg", "000000011813.jpg", "000000018575.jpg"]
HUB_REPO = "xmodal-test/tiny-siglip"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Five coco-mini photos and their captions."""
    folder = tmp_path_factory.mktemp("hf-photos")
    for name in PHOTOS:
        shutil.copyfile(COCO_MINI / "images" / name, folder / name)
    with open(COCO_MINI / "captions.csv") as source, open(folder.parent / "captions.csv", "w", newline="") as out:
        rows = [row for row in csv.DictReader(source) if row["image"] in PHOTOS]
        writer = csv.DictWriter(out, fieldnames=["image", "caption"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return folder


@pytest.fixture(scope="module", params=["clip-folder", "siglip-hub"])
def served(request, photos, tmp_path_factory):
    """(server, spec, env) for each form; the SigLIP index names `hf:org/repo`, read from an offline cache."""
    if request.param == "clip-folder":
        spec, env = str(request.getfixturevalue("tiny_hf_clip_dir")), {}
    else:
        folder = request.getfixturevalue("tiny_hf_siglip_dir")
        cache = tmp_path_factory.mktemp("hf-cache")
        fill_hub_cache(cache, HUB_REPO, {path.name: path for path in folder.iterdir()})
        spec, env = f"hf:{HUB_REPO}", {"HF_HUB_CACHE": str(cache), "XMODAL_OFFLINE": "1"}
    out = tmp_path_factory.mktemp(f"{request.param}-index")
    built = run_xmodal(
        "index", photos, "--out", out, "--model", spec, "--captions", photos.parent / "captions.csv",
        "--workers", "0", "--no-progress", "--no-draft", env=env,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    with Server(out, tmp_path_factory.mktemp(f"{request.param}-logs") / "server.log", env=env) as running:
        running.wait_ready()
        yield running, spec, env


def _file(name: str) -> dict:
    return {"file": (name, (COCO_MINI / "images" / name).read_bytes(), "application/octet-stream")}


def test_search_both_ways_and_embeddings_equal_the_encoders(served):
    server, spec, env = served
    encoder = Encoder.from_spec(spec, "cpu", offline=True, cache_dir=env.get("HF_HUB_CACHE"))
    with httpx.Client(base_url=server.url, timeout=60) as client:
        index = client.get("/v1/indexes").json()
        assert index["models"][0]["spec"] == encoder.spec and index["models"][0]["fingerprint"] == encoder.fingerprint

        text_hits = client.post("/v1/search/text", json={"text": "a person in a room", "k": 5}).json()["results"]
        assert sorted(hit["path"] for hit in text_hits) == sorted(PHOTOS)
        image_hits = client.post("/v1/search/image", files=_file(PHOTOS[1]), data={"k": "3"}).json()["results"]
        assert image_hits[0]["path"] == PHOTOS[1] and image_hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
        caption_hits = client.post("/v1/search/image", files=_file(PHOTOS[2]), data={"k": "2", "target": "texts"})
        assert caption_hits.status_code == 200 and len(caption_hits.json()["results"]) == 2

        texts = ["a photo of a cat", "一只猫坐在沙发上"]
        embedded = client.post("/v1/embed/text", json={"texts": texts}).json()
        np.testing.assert_allclose(embedded["embeddings"], encoder.encode_texts(texts), atol=1e-5)
        image = client.post("/v1/embed/image", files=_file(PHOTOS[0])).json()
        expected = encoder.embed_images([load_image(COCO_MINI / "images" / PHOTOS[0])])
        np.testing.assert_allclose(image["embeddings"], expected, atol=1e-5)


def test_rank_and_contrastive_vqa_but_no_captions(served):
    server, _, _ = served
    photo = base64.b64encode((COCO_MINI / "images" / PHOTOS[0]).read_bytes()).decode()
    with httpx.Client(base_url=server.url, timeout=60) as client:
        ranked = client.post("/v1/rank", json={"image_b64": photo, "texts": ["a room", "a bus", "a cat"]})
        assert ranked.status_code == 200 and len(ranked.json()["results"]) == 3
        answers = ["a television", "a horse"]
        vqa = client.post("/v1/vqa", json={"image_b64": photo, "question": "what is there?", "answers": answers})
        assert vqa.status_code == 200 and vqa.json()["method"] == "contrastive", vqa.text
        assert client.post("/v1/caption", files=_file(PHOTOS[0])).status_code == 501
        open_question = client.post("/v1/vqa", json={"image_b64": photo, "question": "what is there?"})
        assert open_question.status_code == 501
