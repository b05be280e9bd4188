"""A new published version is picked up while requests run, and none of them fails."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from PIL import Image

from xmodal.app.testing import Server
from xmodal.indexer.build import BuildConfig, build_index
from xmodal.models.encoders import Encoder

pytestmark = pytest.mark.e2e


def test_hot_swap_under_load_fails_no_request(tiny_coca_dir, tiny_clip_dir, tmp_path):
    encoder = Encoder.from_spec(f"local-dir:{tiny_coca_dir}", "cpu")
    photos, out = tmp_path / "photos", tmp_path / "index"
    photos.mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (60 * i, 10, 200)).save(photos / f"{i}.png")
    first = build_index(BuildConfig(photos, out, workers=0, progress=False), encoder)

    statuses, stop = [], threading.Event()

    def load_loop():
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while not stop.is_set() and len(statuses) < 5000:
                statuses.append(client.post("/v1/search/text", json={"text": "a blue square", "k": 50}).status_code)

    # One client loops as fast as it can: past the default per-IP rate limit (50/s) it would get 429s,
    # which are not what this test is about.
    with Server(out, tmp_path / "log", env={"XMODAL_RELOAD_INTERVAL_S": "0.2", "XMODAL_RATE_LIMIT_RPS": "0"}) as server:
        server.wait_ready()
        loader = threading.Thread(target=load_loop)
        loader.start()
        for i in range(4, 7):
            Image.new("RGB", (32, 32), (10, 40 * i, 30)).save(photos / f"{i}.png")
        second = build_index(BuildConfig(photos, out, workers=0, progress=False), encoder)
        deadline = time.monotonic() + 60
        while httpx.get(server.url + "/v1/index").json()["version"] != second.version.name:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        time.sleep(0.5)
        stop.set()
        loader.join()
        assert len(httpx.post(server.url + "/v1/search/text", json={"text": "x", "k": 50}).json()["results"]) == 7

        # A version built with other weights is refused; the server keeps serving the one it has.
        build_index(
            BuildConfig(photos, out, workers=0, progress=False), Encoder.from_spec(f"local-dir:{tiny_clip_dir}", "cpu")
        )
        time.sleep(1.5)
        assert httpx.get(server.url + "/v1/index").json()["version"] == second.version.name
        assert "not serving" in server.log()

    assert first.version != second.version
    assert statuses and set(statuses) == {200}, f"{len(statuses)} requests, statuses {set(statuses)}"


def test_admin_reload_swaps_at_once_when_polling_is_off(tiny_coca_dir, tmp_path):
    encoder = Encoder.from_spec(f"local-dir:{tiny_coca_dir}", "cpu")
    photos, out = tmp_path / "photos", tmp_path / "index"
    photos.mkdir()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(photos / "a.png")
    first = build_index(BuildConfig(photos, out, workers=0, progress=False), encoder)
    with Server(out, tmp_path / "log", env={"XMODAL_RELOAD_INTERVAL_S": "0"}) as server:
        server.wait_ready()
        Image.new("RGB", (32, 32), (10, 200, 10)).save(photos / "b.png")
        second = build_index(BuildConfig(photos, out, workers=0, progress=False), encoder)
        assert httpx.get(server.url + "/v1/index").json()["version"] == first.version.name  # no polling
        reload = httpx.post(server.url + "/v1/admin/index/reload").json()
        assert reload == {
            "index": "default",
            "swapped": True,
            "previous": first.version.name,
            "version": second.version.name,
        }
        assert httpx.post(server.url + "/v1/admin/index/reload").json()["swapped"] is False
