"""/healthz and /readyz."""

from __future__ import annotations


def test_alive_and_ready(client):
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/readyz").json()["status"] == "ready"
