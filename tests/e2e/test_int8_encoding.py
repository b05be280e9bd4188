"""XMODAL_TEXT_INT8 and XMODAL_IMAGE_INT8 on a real `xmodal serve`: request texts and images encoded with
int8 weight copies, close to fp32."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.conftest import COCO_MINI, requires_data
from tests.e2e.conftest import LIMITS
from xmodal.app.testing import Server

pytestmark = [pytest.mark.e2e, requires_data(COCO_MINI)]
PHOTO = COCO_MINI / "images" / "000000000139.jpg"
TEXTS = ["a dog on a beach", "two people riding bikes down a busy street", "pizza"]


@pytest.fixture(scope="module")
def int8_client(coco_index_dir, tmp_path_factory):
    env = {**LIMITS, "XMODAL_TEXT_INT8": "1", "XMODAL_IMAGE_INT8": "1"}
    with Server(coco_index_dir, tmp_path_factory.mktemp("int8") / "server.log", env=env) as running:
        running.wait_ready()
        with httpx.Client(base_url=running.url, timeout=60) as http:
            yield http


def test_int8_text_vectors_and_searches_stay_close_to_fp32(client, int8_client):
    fp32 = np.array(client.post("/v1/embed/text", json={"texts": TEXTS}).json()["embeddings"])
    int8 = np.array(int8_client.post("/v1/embed/text", json={"texts": TEXTS}).json()["embeddings"])
    assert (fp32 * int8).sum(axis=1).min() > 0.99 and not np.allclose(fp32, int8, atol=1e-5)
    for text in TEXTS:
        exact = client.post("/v1/search/text", json={"text": text, "k": 20}).json()["results"]
        quantized = int8_client.post("/v1/search/text", json={"text": text, "k": 20}).json()["results"]
        # the same items near the top; scores move by about the vectors' difference
        assert len({r["id"] for r in exact[:10]} & {r["id"] for r in quantized}) >= 8
        assert abs(exact[0]["score"] - quantized[0]["score"]) < 0.02


def test_int8_image_vectors_and_searches_stay_close_to_fp32(client, int8_client):
    upload = {"file": ("photo.jpg", PHOTO.read_bytes())}
    fp32 = np.array(client.post("/v1/embed/image", files=upload).json()["embeddings"][0])
    int8 = np.array(int8_client.post("/v1/embed/image", files=upload).json()["embeddings"][0])
    assert fp32 @ int8 > 0.99 and not np.allclose(fp32, int8, atol=1e-5)
    exact = client.post("/v1/search/image", files=upload, data={"k": "10"}).json()["results"]
    quantized = int8_client.post("/v1/search/image", files=upload, data={"k": "10"}).json()["results"]
    assert exact[0]["id"] == quantized[0]["id"]  # the photo is in the index: it finds itself either way
