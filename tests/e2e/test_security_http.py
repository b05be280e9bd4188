"""Production settings over a real server: API keys and scopes, rate limits, CORS, the body limit, image_url
refusals, /metrics, request ids and JSON logs."""

from __future__ import annotations

import json

import httpx
import pytest

from xmodal.app.testing import Server, free_port, run_xmodal

pytestmark = pytest.mark.e2e

KEYS = {
    name: f"{name}-key-0123456789abcdef"
    for name in ("read", "admin", "flood", "metrics", "cors", "body", "ssrf", "trace")
}
# Each test spends its own key: with 1 request/s and a burst of 8, tests sharing a key would run each other dry.
SCOPES = {key: ("admin" if name == "admin" else "read") for name, key in KEYS.items()}
ORIGIN = "https://photos.example.org"
MAX_UPLOAD = 30_000
SECURE = {
    "XMODAL_API_KEYS": json.dumps(SCOPES),
    "XMODAL_RATE_LIMIT_RPS": "1",
    "XMODAL_RATE_LIMIT_BURST": "8",
    "XMODAL_CORS_ORIGINS": json.dumps([ORIGIN]),
    "XMODAL_ALLOW_IMAGE_URL": "true",
    "XMODAL_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
    "XMODAL_LOG_FORMAT": "json",
}


def _auth(name: str) -> dict:
    return {"Authorization": f"Bearer {KEYS[name]}"}


@pytest.fixture(scope="module")
def secure(coco_index_dir, tmp_path_factory):
    with Server(coco_index_dir, tmp_path_factory.mktemp("secure") / "server.log", env=SECURE) as running:
        running.wait_ready()
        yield running


def test_keys_and_scopes(secure):
    url = secure.url
    assert httpx.get(url + "/healthz").status_code == 200 and httpx.get(url + "/readyz").status_code == 200
    missing = httpx.get(url + "/v1/index")
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
    wrong = httpx.get(url + "/v1/index", headers={"Authorization": "Bearer " + KEYS["read"][:-1] + "X"})
    assert wrong.status_code == 401 and "invalid" in wrong.json()["detail"]
    assert httpx.get(url + "/v1/index", headers={"Authorization": KEYS["read"]}).status_code == 401  # no scheme
    assert httpx.get(url + "/v1/index", headers=_auth("read")).status_code == 200
    search = httpx.post(url + "/v1/search/text", json={"text": "a dog", "k": 2}, headers=_auth("read"))
    assert search.status_code == 200 and len(search.json()["results"]) == 2
    forbidden = httpx.get(url + "/v1/admin/config", headers=_auth("read"))
    assert forbidden.status_code == 403 and "admin" in forbidden.json()["detail"]
    config = httpx.get(url + "/v1/admin/config", headers=_auth("admin"))
    assert config.status_code == 200 and config.json()["max_upload_bytes"] == MAX_UPLOAD
    assert "api_keys" not in config.json() and KEYS["admin"] not in config.text
    assert httpx.get(url + "/metrics").status_code == 401
    assert "auth on: 8 API keys (1 admin)" in secure.log()


def test_rate_limit_is_429_with_retry_after(secure):
    answers = [httpx.get(secure.url + "/v1/index", headers=_auth("flood")) for _ in range(12)]
    codes = [a.status_code for a in answers]
    assert codes[:8] == [200] * 8 and 429 in codes[8:]
    limited = next(a for a in answers if a.status_code == 429)
    assert int(limited.headers["retry-after"]) >= 1 and "rate limit" in limited.json()["detail"]
    assert httpx.get(secure.url + "/v1/index", headers=_auth("read")).status_code == 200  # other keys unaffected


def test_cors_only_for_configured_origins(secure, client):
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    allowed = httpx.options(secure.url + "/v1/search/text", headers={"Origin": ORIGIN, **preflight})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.options(secure.url + "/v1/search/text", headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in other.headers
    simple = httpx.get(secure.url + "/v1/index", headers={"Origin": ORIGIN, **_auth("cors")})
    assert simple.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()
    # CORS is off by default: the default server sends no CORS headers at all.
    assert "access-control-allow-origin" not in client.get("/v1/index", headers={"Origin": ORIGIN}).headers


def test_body_limit_on_a_json_route(secure):
    limit = MAX_UPLOAD * 4 // 3 + 64 * 1024
    big = {"text": "x" * (limit + 10)}
    declared = httpx.post(secure.url + "/v1/search/text", json=big, headers=_auth("body"))
    assert declared.status_code == 413 and "over the limit" in declared.json()["detail"]

    def chunks():
        for _ in range(limit // 10_000 + 2):
            yield b"x" * 10_000

    streamed = httpx.post(
        secure.url + "/v1/embed/text", content=chunks(), headers={"content-type": "application/json", **_auth("body")}
    )
    assert streamed.status_code == 413


def test_image_url_refuses_internal_addresses_and_other_schemes(secure):
    def ask(url):
        return httpx.post(secure.url + "/v1/search/image", json={"image_url": url, "k": 1}, headers=_auth("ssrf"))

    loopback = ask(f"http://localhost:{secure.port}/healthz")  # the server itself: a classic SSRF target
    assert loopback.status_code == 422 and "not a public host" in loopback.json()["detail"]
    assert "127.0.0.1" not in loopback.json()["detail"]  # never what an internal name resolves to
    assert ask("http://169.254.169.254/latest/meta-data/").status_code == 422  # cloud metadata
    assert ask(f"http://[::ffff:127.0.0.1]:{secure.port}/").status_code == 422
    assert ask("file:///etc/passwd").status_code == 422
    assert ask("gopher://example.com/").status_code == 422


def test_image_url_is_off_by_default(client):
    response = client.post("/v1/search/image", json={"image_url": "https://example.com/cat.jpg"})
    assert response.status_code == 422 and "XMODAL_ALLOW_IMAGE_URL" in response.json()["detail"]


def test_metrics_after_a_few_requests(secure):
    for text in ("a cat", "a bus", "a kitchen"):
        assert (
            httpx.post(secure.url + "/v1/search/text", json={"text": text}, headers=_auth("metrics")).status_code == 200
        )
    body = httpx.get(secure.url + "/metrics", headers=_auth("metrics")).text
    assert 'xmodal_request_duration_seconds_count{method="POST",route="/v1/search/text",status="200"}' in body
    assert 'route="/v1/index",status="401"' in body  # statuses other than 200 too
    model = json.loads(httpx.get(secure.url + "/v1/indexes", headers=_auth("metrics")).text)["models"][0]["spec"]
    text_buckets = [line for line in body.splitlines() if line.startswith('xmodal_batch_size_bucket{batcher="text"')]
    assert any('le="+Inf"' in line and f'model="{model}"' in line for line in text_buckets)
    assert f'xmodal_batch_queue_depth{{batcher="text",model="{model}"}} 0.0' in body
    assert "xmodal_model_info{" in body and 'index="default"' in body and "index_version=" in body
    assert 'xmodal_index_vectors{index="default",kind="images"} 159.0' in body and "xmodal_ready 1.0" in body


def test_metrics_are_open_when_auth_is_off(client):
    assert client.get("/metrics").status_code == 200


def test_request_ids_are_echoed_and_logged_as_json(secure):
    echoed = httpx.get(secure.url + "/v1/index", headers={"X-Request-ID": "trace-abc-123", **_auth("trace")})
    assert echoed.headers["x-request-id"] == "trace-abc-123"
    made = httpx.get(secure.url + "/healthz")
    assert len(made.headers["x-request-id"]) == 32
    lines = [json.loads(line) for line in secure.log().splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("request_id") == "trace-abc-123" and line["logger"] == "xmodal.access"]
    assert access and access[0]["status"] == 200 and access[0]["path"] == "/v1/index" and access[0]["key"]
    assert KEYS["trace"] not in secure.log()


def test_serve_refuses_a_public_address_without_keys(coco_index_dir):
    refused = run_xmodal(
        "serve", "--index", coco_index_dir, "--host", "0.0.0.0", "--port", str(free_port()), timeout=120
    )
    assert refused.returncode == 2 and "refusing to serve on 0.0.0.0 without API keys" in refused.stderr
    short = run_xmodal(
        "serve",
        "--index",
        coco_index_dir,
        "--port",
        str(free_port()),
        env={"XMODAL_API_KEYS": '{"short": "read"}'},
        timeout=120,
    )
    assert short.returncode == 2 and "at least 16" in short.stderr
