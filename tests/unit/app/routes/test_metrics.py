"""/metrics: Prometheus text with the request latencies by route."""

from __future__ import annotations


def test_prometheus_text(client):
    client.get("/healthz")
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    assert "/healthz" in response.text
