"""app/client.py without a server: retries on 429/503 (Retry-After, backoff, bounded), errors, images."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys

import httpx
import pytest
from PIL import Image

from xmodal.app.client import AsyncXmodalClient, XmodalClient, XmodalHTTPError

SUMMARY = {
    "version": "v0001",
    "created_at": "now",
    "model": "m",
    "fingerprint": "f",
    "embed_dim": 4,
    "metric": "ip",
    "images": 3,
    "texts": 0,
    "index_key": "Flat",
    "skipped": 0,
    "skipped_by_reason": {},
    "xmodal_version": "0",
}


def _replies(*responses):
    """A MockTransport answering the given (status, headers, body) in turn; records the requests."""
    seen, queue = [], list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status, headers, body = queue.pop(0)
        return httpx.Response(status, headers=headers, json=body)

    return httpx.MockTransport(handler), seen


def _client(transport, **kwargs):
    waits = []
    return XmodalClient("http://xm", transport=transport, sleep=waits.append, **kwargs), waits


def test_429_is_retried_after_the_servers_retry_after():
    transport, seen = _replies((429, {"Retry-After": "2"}, {"detail": "busy"}), (200, {}, SUMMARY))
    client, waits = _client(transport)
    assert client.index().images == 3
    assert waits == [2.0] and len(seen) == 2


def test_without_retry_after_the_backoff_doubles_and_attempts_are_bounded():
    busy = (503, {}, {"detail": "not ready: still loading"})
    transport, seen = _replies(*[busy] * 4)
    client, waits = _client(transport, retries=3, backoff_s=0.25)
    with pytest.raises(XmodalHTTPError) as raised:
        client.index()
    assert raised.value.status == 503 and raised.value.detail == "not ready: still loading"
    assert waits == [0.25, 0.5, 1.0] and len(seen) == 4  # 1 try + 3 retries


def test_retry_after_is_capped_and_other_errors_are_not_retried():
    transport, seen = _replies((429, {"Retry-After": "3600"}, {"detail": "slow down"}), (200, {}, SUMMARY))
    client, waits = _client(transport, max_wait_s=5)
    client.index()
    assert waits == [5]
    transport, seen = _replies((422, {"x-request-id": "r1"}, {"detail": "text is empty"}))
    client, waits = _client(transport)
    with pytest.raises(XmodalHTTPError) as raised:
        client.search_text("")
    assert (raised.value.status, raised.value.detail, raised.value.request_id) == (422, "text is empty", "r1")
    assert waits == [] and len(seen) == 1
    transport, seen = _replies((429, {}, {"detail": "busy"}))
    client, waits = _client(transport, retries=0)
    with pytest.raises(XmodalHTTPError, match="429: busy"):
        client.index()


def test_api_key_json_body_and_images_as_path_bytes_or_pil(tmp_path):
    transport, seen = _replies(*[(200, {}, {"embeddings": [[1.0]], "dim": 1, "model": "m", "took_ms": 1})] * 3)
    client, _ = _client(transport, api_key="k" * 20)
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buffer, format="PNG")
    path = tmp_path / "red.png"
    path.write_bytes(buffer.getvalue())
    for image in (path, buffer.getvalue(), Image.open(path)):
        assert client.embed_image(image).dim == 1
    assert all(r.headers["authorization"] == "Bearer " + "k" * 20 for r in seen)
    assert all(b"multipart/form-data" in r.headers["content-type"].encode() for r in seen)
    with pytest.raises(TypeError):
        client.embed_image(42)


def test_search_text_sends_only_the_options_given():
    transport, seen = _replies((200, {}, {"results": [], "took_ms": 1}))
    client, _ = _client(transport)
    client.search_text("dog", 5, filters={"width": {"gte": 10}}, dedup=0.95)
    assert json.loads(seen[0].content) == {
        "text": "dog",
        "k": 5,
        "offset": 0,
        "filters": {"width": {"gte": 10}},
        "dedup": 0.95,
    }


def test_async_client_retries_the_same_way():
    transport, seen = _replies((429, {"Retry-After": "1"}, {"detail": "busy"}), (200, {}, SUMMARY))
    waits = []

    async def sleep(seconds):
        waits.append(seconds)

    async def main():
        async with AsyncXmodalClient("http://xm", transport=transport, sleep=sleep) as client:
            return await client.index()

    assert asyncio.run(main()).images == 3 and waits == [1.0] and len(seen) == 2


def test_index_goes_in_the_json_body_the_form_or_the_query():
    search = (200, {}, {"results": [], "took_ms": 1})
    listing = (200, {}, {"indexes": [SUMMARY], "models": []})
    reloaded = (200, {}, {"index": "docs", "swapped": False, "previous": "v1", "version": "v1"})
    transport, seen = _replies(search, search, (200, {}, SUMMARY), listing, reloaded, reloaded)
    client, _ = _client(transport)
    client.search_text("dog", index="docs")
    client.search_image(b"png", index="docs")
    client.index("docs")
    assert client.indexes().indexes[0].images == 3
    assert client.reload_index("docs")["index"] == "docs"
    client.reload_index()
    assert json.loads(seen[0].content)["index"] == "docs"
    assert b'name="index"\r\n\r\ndocs' in seen[1].read()
    assert seen[2].url.params["index"] == "docs" and seen[3].url.path == "/v1/indexes"
    assert [r.url.path for r in seen[4:]] == ["/v1/indexes/docs/reload", "/v1/admin/index/reload"]


def test_the_client_imports_without_torch():
    """The client is for callers without the model stack: it must not pull in torch (nor models that import it)."""
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
        "import xmodal.app.client as client\n"
        "assert client.XmodalHTTPError is not None\n"
        "assert not any(name.startswith(('open_clip', 'faiss')) for name in sys.modules), sorted(sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
