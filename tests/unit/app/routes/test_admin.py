"""/v1/admin: the settings without secrets, and the default index's reload."""

from __future__ import annotations


def test_config_leaves_secrets_out(client):
    config = client.get("/v1/admin/config").json()
    assert config["max_k"] == 50 and "api_keys" not in config and config["auth"] == {"enabled": False}


def test_reload_the_default_or_a_named_index(client):
    assert client.post("/v1/admin/index/reload").json()["index"] == "default"
    unknown = client.post("/v1/admin/index/reload?index=videos")
    assert unknown.status_code == 404 and "no index named 'videos'" in unknown.json()["detail"]
