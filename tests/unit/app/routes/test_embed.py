"""/v1/embed/{text,image}: unit vectors from the index's model, and the typed 4xx."""

from __future__ import annotations

import numpy as np
import pytest

from tests.unit.app.routes.conftest import PNG, PNG_B64


def test_texts_become_unit_vectors(client):
    response = client.post("/v1/embed/text", json={"texts": ["a red square", "a blue square"]})
    assert response.status_code == 200, response.text
    body = response.json()
    vectors = np.asarray(body["embeddings"])
    assert vectors.shape == (2, body["dim"]) == (2, 32)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_an_image_by_json_and_by_form_gives_one_vector(client):
    by_json = client.post("/v1/embed/image", json={"image_b64": PNG_B64}).json()
    by_form = client.post("/v1/embed/image", files={"file": ("p.png", PNG)}, data={"index": "clip"}).json()
    assert len(by_json["embeddings"]) == len(by_form["embeddings"]) == 1
    assert by_json["model"] != by_form["model"]  # each index's own model


@pytest.mark.parametrize(
    "path, kwargs, status, message",
    [
        ("/v1/embed/text", dict(json={"text": "a", "texts": ["b"]}), 422, "exactly one of 'text' or 'texts'"),
        ("/v1/embed/text", dict(json={"texts": []}), 422, "give 1 to 8 texts"),
        ("/v1/embed/text", dict(json={"texts": ["a"] * 9}), 422, "give 1 to 8 texts"),
        ("/v1/embed/text", dict(json={"texts": [""]}), 422, "text is empty"),
        ("/v1/embed/text", dict(json={"text": "a", "index": "nope"}), 404, "no index named 'nope'"),
        ("/v1/embed/image", dict(json={"image_b64": PNG_B64, "index": 3}), 422, "index"),
        ("/v1/embed/image", dict(json={"image_b64": ""}), 422, "empty"),
    ],
)
def test_refusals(client, path, kwargs, status, message):
    response = client.post(path, **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
