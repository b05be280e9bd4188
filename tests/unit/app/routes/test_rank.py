"""/v1/rank: an image against given texts, a text against given item ids, and the typed 4xx."""

from __future__ import annotations

import json

import pytest

from tests.unit.app.routes.conftest import PNG, PNG_B64

DEEP_BODY = b'{"text": "a", "images": [' * 2000  # never closed: refused for its depth before anything else


def test_an_image_ranks_texts_by_json_and_by_form(client):
    texts = ["a red square", "a blue square", "a cat"]
    by_json = client.post("/v1/rank", json={"image_b64": PNG_B64, "texts": texts})
    by_form = client.post("/v1/rank", files={"file": ("p.png", PNG)}, data={"texts": json.dumps(texts)})
    assert by_json.status_code == by_form.status_code == 200, by_json.text + by_form.text
    assert sorted(hit["position"] for hit in by_json.json()["results"]) == [0, 1, 2]
    ranked = [(hit["position"], hit["text"]) for hit in by_json.json()["results"]]
    assert ranked == [(hit["position"], hit["text"]) for hit in by_form.json()["results"]]


def test_a_text_ranks_items(client):
    response = client.post("/v1/rank", json={"text": "a red square", "images": [3, 0]})
    assert response.status_code == 200, response.text
    assert {hit["path"] for hit in response.json()["results"]} == {"red.png", "blue.png"}


@pytest.mark.parametrize(
    "kwargs, status, message",
    [
        (dict(json={"text": "a dog", "images": [4]}), 422, "unknown item ids: [4]"),
        (dict(json={"text": "a dog", "images": [10**30]}), 422, "unknown item ids"),
        (dict(json={"text": "a dog", "images": []}), 422, "give 1 to 8 images"),
        (dict(json={"image_b64": PNG_B64, "texts": ["x"] * 9}), 422, "give 1 to 8 texts"),
        (dict(json={"image_b64": PNG_B64, "texts": [1, 2]}), 422, "texts"),
        (dict(json=["a"]), 422, "JSON body must be an object"),
        (dict(files={"file": ("p.png", PNG)}, data={"texts": "not json"}), 422, "JSON array"),
        (dict(files={"file": ("p.png", PNG)}, data={"texts": "[" * 3000 + "]" * 3000}), 422, "nested too deeply"),
        (
            dict(content=b'{"text": "a", "images": [' * 2000, headers={"content-type": "application/json"}),
            400,
            "nested too deeply",
        ),
    ],
)
def test_refusals(client, kwargs, status, message):
    response = client.post("/v1/rank", **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
