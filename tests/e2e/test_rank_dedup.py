"""POST /v1/rank and search `dedup` on a real `xmodal serve`, against the stored embeddings."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from tests.conftest import COCO_MINI, requires_data
from xmodal.app.vectors import dedup
from xmodal.indexer import store

pytestmark = [pytest.mark.e2e, requires_data(COCO_MINI)]
PHOTO = COCO_MINI / "images" / "000000000139.jpg"


@pytest.fixture(scope="module")
def stored(coco_index_dir):
    version = store.resolve_version(coco_index_dir)
    return store.read_vectors(version, store.read_manifest(version).images.embeddings)


def _emb(client, **body):
    return np.array(client.post("/v1/embed/text", json=body).json()["embeddings"])


def test_rank_texts_against_an_image_by_upload_and_base64(client):
    texts = ["a plane in the sky", "a living room with a television", "a bowl of soup"]
    by_upload = client.post(
        "/v1/rank", files={"file": ("p.jpg", PHOTO.read_bytes())}, data={"texts": str(texts).replace("'", '"')}
    )
    assert by_upload.status_code == 200, by_upload.text
    by_json = client.post("/v1/rank", json={"image_b64": base64.b64encode(PHOTO.read_bytes()).decode(), "texts": texts})
    assert by_upload.json()["results"] == by_json.json()["results"]
    image_emb = np.array(
        client.post("/v1/embed/image", files={"file": ("p.jpg", PHOTO.read_bytes())}).json()["embeddings"][0]
    )
    exact = _emb(client, texts=texts) @ image_emb
    results = by_json.json()["results"]
    assert [r["position"] for r in results] == np.argsort(-exact, kind="stable").tolist()
    assert [r["text"] for r in results] == [texts[r["position"]] for r in results]
    assert np.allclose([r["score"] for r in results], np.sort(exact)[::-1], atol=1e-4)


def test_rank_items_against_a_text_equals_the_stored_vectors(client, stored):
    ids = [3, 150, 0, 42]
    body = client.post("/v1/rank", json={"text": "a dog", "images": ids}).json()
    exact = stored[ids] @ _emb(client, text="a dog")[0]
    assert [r["id"] for r in body["results"]] == [ids[i] for i in np.argsort(-exact, kind="stable")]
    assert np.allclose([r["score"] for r in body["results"]], np.sort(exact)[::-1], atol=1e-4)
    assert all(r["path"].startswith("images/") for r in body["results"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(json={"text": "a dog", "images": list(range(201))}), "give 1 to 200 images, got 201"),
        (dict(json={"text": "a dog", "images": []}), "give 1 to 200 images"),
        (dict(json={"text": "a dog", "images": [159]}), "unknown item ids: [159]"),
        (dict(json={"text": "", "images": [1]}), "text is empty"),
        (
            dict(json={"image_b64": base64.b64encode(PHOTO.read_bytes()).decode(), "texts": ["x"] * 201}),
            "give 1 to 200 texts",
        ),
        (dict(files={"file": ("p.jpg", PHOTO.read_bytes())}, data={"texts": "not json"}), "JSON array"),
        (dict(files={"file": ("p.jpg", PHOTO.read_bytes())}), "texts"),
        (dict(json=["a"]), "JSON body must be an object"),
    ],
)
def test_rank_refuses_bad_input(client, kwargs, message):
    response = client.post("/v1/rank", **kwargs)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]


def test_dedup_drops_near_duplicates_and_still_returns_k(client, stored):
    query = "a person riding a horse"
    query_emb = _emb(client, text=query)[0]
    order = np.argsort(-(stored @ query_emb), kind="stable")
    threshold = float(np.quantile(stored @ stored.T, 0.9))  # loose enough to drop some of the top 100
    expected = [int(order[p]) for p in dedup(stored[order[:100]], threshold)][:10]
    assert len(expected) == 10 and expected != order[:10].tolist()
    body = client.post("/v1/search/text", json={"text": query, "k": 10, "dedup": threshold}).json()
    assert [hit["id"] for hit in body["results"]] == expected
    assert client.post("/v1/search/text", json={"text": query, "dedup": 1.5}).status_code == 422
    image = client.post(
        "/v1/search/image", files={"file": ("p.jpg", PHOTO.read_bytes())}, data={"k": "3", "dedup": "0.5"}
    )
    assert image.status_code == 200 and len(image.json()["results"]) >= 1
