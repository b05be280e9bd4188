"""Batching across requests over a real server: same answers as one at a time; 429 when full."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from xmodal.app.testing import Server

pytestmark = pytest.mark.e2e
QUERIES = [
    f"{colour} {thing}"
    for colour in ("red", "blue", "green", "white")
    for thing in ("bus", "dog", "kitchen", "plane", "pizza", "bed", "cat", "boat")
]


async def _concurrently(url: str, path: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await asyncio.gather(*(client.post(path, json=body) for body in bodies))


def test_concurrent_batched_results_equal_one_at_a_time(server, client):
    one_by_one = [client.post("/v1/search/text", json={"text": q, "k": 5}).json()["results"] for q in QUERIES]
    together = asyncio.run(_concurrently(server.url, "/v1/search/text", [{"text": q, "k": 5} for q in QUERIES]))
    assert all(r.status_code == 200 for r in together)
    for alone, batched in zip(one_by_one, (r.json()["results"] for r in together)):
        assert [hit["id"] for hit in alone] == [hit["id"] for hit in batched]
        assert np.allclose([h["score"] for h in alone], [h["score"] for h in batched], atol=1e-5)
    vectors_alone = np.array([client.post("/v1/embed/text", json={"text": q}).json()["embeddings"][0] for q in QUERIES])
    vectors_batched = np.array(client.post("/v1/embed/text", json={"texts": QUERIES}).json()["embeddings"])
    assert np.allclose(vectors_alone, vectors_batched, atol=1e-5)


def test_overload_is_429_with_retry_after_and_the_server_recovers(coco_index_dir, tmp_path):
    env = {"XMODAL_BATCH_MAX_QUEUE": "8", "XMODAL_MAX_EMBED_BATCH": "64"}
    with Server(coco_index_dir, tmp_path / "log", env=env) as server:
        server.wait_ready()
        flood = httpx.post(server.url + "/v1/embed/text", json={"texts": QUERIES}, timeout=60)
        assert flood.status_code == 429 and flood.headers["retry-after"] == "1"
        assert "queue is full" in flood.json()["detail"]
        assert httpx.post(server.url + "/v1/embed/text", json={"texts": QUERIES[:8]}, timeout=60).status_code == 200
