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
