"""/v1/indexes: every served index and each model once; per-index reload and its 404."""

from __future__ import annotations


def test_every_index_and_each_model_once(client):
    body = client.get("/v1/indexes").json()
    assert [index["name"] for index in body["indexes"]] == ["default", "clip"]
    assert body["indexes"][0]["texts"] == 3 and body["indexes"][1]["texts"] == 0
    assert sorted(len(model["indexes"]) for model in body["models"]) == [1, 1]


def test_reload_finds_nothing_new_and_an_unknown_index_is_404(client):
    reload = client.post("/v1/indexes/clip/reload")
    assert reload.status_code == 200 and reload.json()["swapped"] is False
    unknown = client.post("/v1/indexes/videos/reload")
    assert unknown.status_code == 404 and "no index named 'videos'" in unknown.json()["detail"]


def test_responses_name_the_index_version_that_answered(client):
    """With replicas or during a hot swap, X-Xmodal-Index-Version says which version a response came from."""
    versions = {index["name"]: index["version"] for index in client.get("/v1/indexes").json()["indexes"]}
    search = client.post("/v1/search/text", json={"text": "a red square", "k": 2})
    assert search.status_code == 200 and search.headers["x-xmodal-index-version"] == versions["default"]
    other = client.post("/v1/search/text?index=clip", json={"text": "a red square", "k": 2})
    assert other.headers["x-xmodal-index-version"] == versions["clip"]
    assert client.get("/v1/items/0").headers["x-xmodal-index-version"] == versions["default"]
    reload = client.post("/v1/indexes/clip/reload")
    assert reload.headers["x-xmodal-index-version"] == reload.json()["version"]
    # No index read, no header: health, the index list, an unknown index.
    assert "x-xmodal-index-version" not in client.get("/readyz").headers
    assert "x-xmodal-index-version" not in client.get("/v1/indexes").headers
    assert "x-xmodal-index-version" not in client.post("/v1/search/text?index=nope", json={"text": "x"}).headers
