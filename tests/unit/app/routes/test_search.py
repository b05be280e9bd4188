"""/v1/search/{text,image,vector}: results, paging, filters, targets, and the typed 4xx of each."""

from __future__ import annotations

import pytest

from tests.unit.app.routes.conftest import PNG, PNG_B64

HUGE = 10**30  # valid JSON, beyond any integer column


def test_text_search_ranks_every_item_and_pages(client):
    everything = client.post("/v1/search/text", json={"text": "a red square", "k": 4})
    assert everything.status_code == 200, everything.text
    results = everything.json()["results"]
    assert sorted(hit["id"] for hit in results) == [0, 1, 2, 3]
    scores = [hit["score"] for hit in results]
    assert scores == sorted(scores, reverse=True)
    page = client.post("/v1/search/text", json={"text": "a red square", "k": 2, "offset": 2}).json()["results"]
    assert [hit["id"] for hit in page] == [hit["id"] for hit in results[2:]]


def test_filters_narrow_the_results(client):
    body = {"text": "a square", "k": 4, "filters": {"width": {"gte": 40, "lt": 41}}}
    hits = client.post("/v1/search/text", json=body).json()["results"]
    assert sorted(hit["path"] for hit in hits) == ["blue.png", "grey.png"]
    hits = client.post("/v1/search/text", json={**body, "filters": {"path": {"in": ["red.png"]}}}).json()["results"]
    assert [hit["path"] for hit in hits] == ["red.png"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"text": " "}, "text is empty"),
        ({"text": "x" * 201}, "over the limit of 200"),
        ({"k": 0}, "k must be between 1 and 50"),
        ({"k": 51}, "k must be between 1 and 50"),
        ({"offset": 101}, "offset must be between 0 and 100"),
        ({"dedup": 1.5}, "dedup must be a cosine threshold"),
        ({"filters": {"colour": "red"}}, "cannot filter on 'colour'"),
        ({"filters": {"width": {"near": 3}}}, "use a value, or an object"),
        ({"filters": {"width": HUGE}}, "does not fit the column's type"),
        ({"filters": {"width": {"in": [HUGE]}}}, "does not fit the column's type"),
        ({"filters": {"width": {"gte": HUGE}}}, "does not fit the column's type"),
        ({"index": "videos"}, "no index named 'videos'"),
    ],
)
def test_text_search_refusals(client, change, message):
    response = client.post("/v1/search/text", json={"text": "a red square", **change})
    assert response.status_code == (404 if "index" in change else 422), response.text
    assert message in response.json()["detail"]


def test_image_search_by_json_and_by_form_agree(client):
    by_json = client.post("/v1/search/image", json={"image_b64": PNG_B64, "k": 3})
    by_form = client.post("/v1/search/image", files={"file": ("p.png", PNG)}, data={"k": "3", "min_score": ""})
    assert by_json.status_code == by_form.status_code == 200, by_json.text + by_form.text
    assert [h["id"] for h in by_json.json()["results"]] == [h["id"] for h in by_form.json()["results"]]
    captions = client.post("/v1/search/image", json={"image_b64": PNG_B64, "k": 3, "target": "texts"}).json()
    assert {hit["text"] for hit in captions["results"]} <= {"a red square", "a green square", "a blue square"}


@pytest.mark.parametrize(
    "request_kwargs, status, message",
    [
        (dict(json={"image_b64": PNG_B64, "k": "many"}), 422, "k"),
        (dict(content=b'{"image_b64": "' + PNG_B64.encode() + b'", "k": 1e400}'), 400, "not finite"),
        (dict(content=b'{"image_b64": "' + PNG_B64.encode() + b'", "offset": -1e400}'), 400, "not finite"),
        (dict(content=b"[" * 5000 + b"]" * 5000), 400, "nested too deeply"),
        (dict(json={"image_b64": PNG_B64, "target": "sounds"}), 422, "target"),
        (dict(json={"image_b64": PNG_B64, "target": "texts", "index": "clip"}), 422, "no captions"),
        (dict(json={"image_b64": "%%%"}), 422, "not valid base64"),
        (dict(json={"k": 3}), 422, "image_b64"),
        (dict(files={"file": ("p.png", b"not an image")}), 422, "unreadable image"),
        (dict(content=b"k=3", headers={"content-type": "text/plain"}), 415, "unsupported content type"),
    ],
)
def test_image_search_refusals(client, request_kwargs, status, message):
    if "content" in request_kwargs and "headers" not in request_kwargs:
        request_kwargs = {**request_kwargs, "headers": {"content-type": "application/json"}}
    response = client.post("/v1/search/image", **request_kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_vector_search_takes_an_embedding(client):
    vector = client.post("/v1/embed/text", json={"text": "a red square"}).json()["embeddings"][0]
    by_vector = client.post("/v1/search/vector", json={"vector": vector, "k": 4}).json()["results"]
    by_text = client.post("/v1/search/text", json={"text": "a red square", "k": 4}).json()["results"]
    assert [hit["id"] for hit in by_vector] == [hit["id"] for hit in by_text]


@pytest.mark.parametrize(
    "body, message",
    [
        ({"vector": [0.0] * 32}, "not all zero"),
        ({"vector": [1.0] * 31}, "must be 32 finite numbers"),
        ({"vector": [1.0] * 32, "filters": {"height": HUGE}}, "does not fit the column's type"),
        ({"vector": [1.0] * 32, "target": "texts", "filters": {"width": 40}}, "filters apply to image results"),
    ],
)
def test_vector_search_refusals(client, body, message):
    response = client.post("/v1/search/vector", json=body)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]
