"""Issue #13's attack classes against a real `xmodal serve` with keys, limits and image_url on: an inflating
fetch, concurrent fetches, non-public addresses, swapped item files, forged log lines and Host-built
redirects, unthrottled key guessing, keyed docs. The fetch cases talk to a local listener on 127.0.0.1 only
(opened to the server with XMODAL_IMAGE_URL_ALLOWED_NETWORKS)."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from PIL import Image

from tests.conftest import COCO_MINI
from xmodal.app.testing import Server, run_xmodal

pytestmark = pytest.mark.e2e

KEY = "harden-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 40, 90)).save(out, format="PNG")
    return out.getvalue()


class Listener(BaseHTTPRequestHandler):
    """What a hostile image host answers: a stacked gzip bomb, a stalled reply, or a plain PNG."""

    seen: list[dict] = []
    png = _png()
    bomb = gzip.compress(gzip.compress(b"\0" * 20_000_000))  # ~20 KB on the wire, 20 MB decoded

    def do_GET(self):  # noqa: N802 - the http.server API
        type(self).seen.append({"path": self.path, "accept-encoding": self.headers.get("accept-encoding")})
        body, headers = self.png, {"Content-Type": "image/png"}
        if self.path.startswith("/bomb"):
            body, headers = self.bomb, {"Content-Type": "image/png", "Content-Encoding": "gzip, gzip"}
        elif self.path.startswith("/slow"):
            time.sleep(3)
        self.send_response(200)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def listener():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Listener)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A few coco-mini images copied into a folder the tests may change (never the shared data)."""
    if not COCO_MINI.is_dir():
        pytest.skip("../shared/data/coco-mini is not present")
    root = tmp_path_factory.mktemp("harden")
    folder = root / "photos"
    folder.mkdir()
    for source in sorted((COCO_MINI / "images").glob("*.jpg"))[:3]:
        shutil.copy(source, folder / source.name)
    (root / "secret.txt").write_text("never indexed")
    return folder


@pytest.fixture(scope="module")
def hardened(photos, tiny_clip_dir, tmp_path_factory):
    out = photos.parent / "index"
    built = run_xmodal("index", photos, "--out", out, "--model", f"local-dir:{tiny_clip_dir}", "--workers", "1")
    assert built.returncode == 0, built.stderr
    env = {
        "XMODAL_API_KEYS": json.dumps({KEY: "read"}),
        "XMODAL_RATE_LIMIT_RPS": "0",
        "XMODAL_ALLOW_IMAGE_URL": "true",
        "XMODAL_IMAGE_URL_ALLOWED_NETWORKS": '["127.0.0.1/32"]',
        "XMODAL_IMAGE_URL_MAX_CONCURRENT": "1",
        "XMODAL_MAX_UPLOAD_BYTES": "5000000",
        "XMODAL_LOG_FORMAT": "text",
    }
    with Server(out, tmp_path_factory.mktemp("harden-log") / "server.log", env=env) as running:
        running.wait_ready()
        yield running


def _image_url(server: Server, url: str) -> httpx.Response:
    return httpx.post(server.url + "/v1/search/image", json={"image_url": url, "k": 1}, headers=AUTH, timeout=30)


def test_an_encoded_reply_is_refused_not_inflated(hardened, listener):
    Listener.seen.clear()
    bomb = _image_url(hardened, listener + "/bomb.png")
    assert bomb.status_code == 502 and "identity" in bomb.json()["detail"]
    assert Listener.seen[-1]["accept-encoding"] == "identity"
    assert _image_url(hardened, listener + "/ok.png").status_code == 200  # the allowed network still works


def test_concurrent_fetches_over_the_limit_are_503_with_retry_after(hardened, listener):
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(_image_url, hardened, listener + "/slow.png")
        time.sleep(1)  # the slow fetch holds the one slot
        refused = _image_url(hardened, listener + "/ok.png")
        assert slow.result().status_code == 200
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
    assert _image_url(hardened, listener + "/ok.png").status_code == 200


def test_non_public_addresses_are_refused_without_saying_what_a_name_resolves_to(hardened):
    site_local = _image_url(hardened, "http://[fec0::1]/x.png")  # is_global says True on this Python
    assert site_local.status_code == 422
    for url in ("http://127.0.0.2:9/x.png", "http://[64:ff9b::a00:1]/x.png", "http://[2002:a9fe:a9fe::]/x.png"):
        refused = _image_url(hardened, url)
        detail = refused.json()["detail"]
        assert refused.status_code == 422 and "not a public host" in detail, url
        assert not any(word in detail for word in ("127.0.0.1", "::1", "loopback", "private", "link-local"))


def test_an_item_file_swapped_for_a_symlink_is_not_served(hardened, photos):
    item = httpx.get(hardened.url + "/v1/items/0", headers=AUTH).json()
    target = photos / item["path"]
    original = target.read_bytes()
    served = httpx.get(hardened.url + "/v1/items/0/image", headers=AUTH)
    assert served.status_code == 200 and served.content == original
    assert served.headers["x-content-type-options"] == "nosniff"
    os.rename(target, target.with_suffix(".bak"))
    try:
        os.symlink(photos.parent / "secret.txt", target)
        swapped = httpx.get(hardened.url + "/v1/items/0/image", headers=AUTH)
        assert swapped.status_code == 409 and b"never indexed" not in swapped.content
        os.remove(target)
        target.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # same size, other bytes
        assert httpx.get(hardened.url + "/v1/items/0/image", headers=AUTH).status_code == 409
    finally:
        os.replace(target.with_suffix(".bak"), target)
    assert httpx.get(hardened.url + "/v1/items/0/image", headers=AUTH).content == original


def test_paths_cannot_forge_log_lines_and_slashes_never_redirect(hardened):
    forged = "/v1/nothing%0d%0a2026-01-01 00:00:00,000 INFO xmodal.access: FORGED-LINE%E2%80%A8"
    assert httpx.get(hardened.url + forged, headers=AUTH).status_code == 404
    log = hardened.wait_for_log("GET /v1/nothing")  # its access line (made harmless) is written after the 404
    assert not any(line.startswith("2026-01-01 00:00:00,000 INFO xmodal.access: FORGED") for line in log.splitlines())
    assert r"\r\n2026-01-01" in log and "\u2028" not in log
    slashed = httpx.get(hardened.url + "/v1/index/", headers={"Host": "evil.example", **AUTH})
    assert slashed.status_code == 200 and "location" not in slashed.headers


def test_docs_need_a_key_when_keys_are_on(hardened):
    assert httpx.get(hardened.url + "/openapi.json").status_code == 401
    schema = httpx.get(hardened.url + "/openapi.json", headers=AUTH)
    assert schema.status_code == 200 and "/v1/search/text" in schema.json()["paths"]


def test_key_guessing_is_throttled_per_address(hardened):
    """Last in this module: it leaves 127.0.0.1's failure bucket dry (the defaults: 20 at once, 1 per 5 s)."""
    with httpx.Client(base_url=hardened.url) as http:
        codes = [
            http.get("/v1/index", headers={"Authorization": f"Bearer guess-{i:04d}"}).status_code for i in range(150)
        ]
    assert 401 in codes and codes.count(429) >= 120
    limited = httpx.get(hardened.url + "/v1/index", headers=AUTH)  # the right key waits too
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert httpx.get(hardened.url + "/healthz").status_code == 200
