from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from xmodal.app.main import create_app
from xmodal.app.security import InsecureConfig, KeyRing, RateLimiter, check_exposure, is_loopback_host
from xmodal.app.settings import Settings

READ, ADMIN = "r" * 20, "a" * 24


def test_keys_are_looked_up_with_their_scope():
    keys = KeyRing({READ: "read", ADMIN: "admin"})
    assert keys.lookup(READ).scope == "read" and not keys.lookup(READ).allows("admin")
    assert keys.lookup(ADMIN).allows("read") and keys.lookup(ADMIN).allows("admin")
    assert keys.lookup(READ + "x") is None and keys.lookup("") is None
    assert keys.lookup(READ).key_id != READ and len(keys) == 2 and keys.count("admin") == 1


def test_short_keys_and_unknown_scopes_are_refused(tmp_path):
    with pytest.raises(InsecureConfig, match="at least 16"):
        KeyRing({"short": "read"})
    with pytest.raises(InsecureConfig, match="scope"):
        KeyRing({READ: "write"})
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({ADMIN: "admin"}))
    keys = KeyRing.from_settings(Settings(api_keys={READ: "read"}, api_keys_file=path))
    assert len(keys) == 2
    path.write_text("[1]")
    with pytest.raises(InsecureConfig, match="JSON object"):
        KeyRing.from_settings(Settings(api_keys_file=path))


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"])
def test_loopback_hosts(host):
    assert is_loopback_host(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "example.com"])
def test_public_hosts(host):
    assert not is_loopback_host(host)


def test_a_public_bind_needs_keys_or_an_explicit_opt_out():
    assert "auth off" in check_exposure(Settings(host="127.0.0.1"), KeyRing({}))
    with pytest.raises(InsecureConfig, match="refusing to serve on 0.0.0.0 without API keys"):
        check_exposure(Settings(host="0.0.0.0"), KeyRing({}))
    assert "auth OFF" in check_exposure(Settings(host="0.0.0.0", allow_unauthenticated=True), KeyRing({}))
    assert "auth on" in check_exposure(Settings(host="0.0.0.0"), KeyRing({READ: "read"}))


def test_token_bucket_allows_the_burst_then_the_rate():
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a") == pytest.approx(0.5)
    assert limiter.acquire("b") == 0.0  # buckets are per identity
    now[0] = 0.5
    assert limiter.acquire("a") == 0.0 and limiter.acquire("a") > 0
    assert RateLimiter(rate=0, burst=1).acquire("a") == 0.0  # 0: off


def test_the_bucket_table_stays_bounded():
    now = [0.0]
    limiter = RateLimiter(rate=1.0, burst=1, clock=lambda: now[0], max_identities=10)
    for i in range(100):
        now[0] += 0.01
        limiter.acquire(str(i))
    assert len(limiter._buckets) <= 10


def test_wait_tells_without_taking_a_token():
    now = [0.0]
    limiter = RateLimiter(rate=1.0, burst=1, clock=lambda: now[0])
    assert limiter.wait("a") == 0.0 and limiter.wait("a") == 0.0 and limiter.acquire("a") == 0.0
    assert limiter.wait("a") == pytest.approx(1.0) and limiter.wait("a") == pytest.approx(1.0)


def _client(**settings) -> TestClient:
    # No lifespan (no model): these routes answer before the runtime is needed.
    return TestClient(create_app(Settings(**{"api_keys": {READ: "read", ADMIN: "admin"}, **settings})))


def test_failed_authentication_is_throttled_per_address():
    client = _client(auth_failure_rps=0.01, auth_failure_burst=5, rate_limit_rps=0)
    wrong = {"Authorization": "Bearer " + "x" * 20}
    codes = [client.get("/v1/admin/config", headers=wrong).status_code for _ in range(30)]
    assert codes[:5] == [401] * 5 and set(codes[5:]) == {429}
    limited = client.get("/v1/admin/config")  # a missing key too
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    # The right key from that address waits as well: a 200 among 429s would still confirm a guess.
    assert client.get("/v1/admin/config", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 429
    assert client.get("/healthz").status_code == 200  # open routes are not keyed, nor throttled
    other = TestClient(client.app, client=("192.0.2.1", 5000))  # another address has its own bucket
    assert other.get("/v1/admin/config", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200


def test_missing_keys_count_as_failures_and_the_throttle_can_be_turned_off():
    throttled = _client(auth_failure_burst=2)
    assert [throttled.get("/v1/admin/config").status_code for _ in range(3)] == [401, 401, 429]
    off = _client(auth_failure_rps=0, auth_failure_burst=1)
    assert {off.get("/v1/admin/config").status_code for _ in range(10)} == {401}


def test_docs_need_a_key_when_keys_are_on_unless_public():
    keyed = _client()
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert keyed.get(path).status_code == 401, path
        assert keyed.get(path, headers={"Authorization": f"Bearer {READ}"}).status_code == 200, path
    schema = keyed.get("/openapi.json", headers={"Authorization": f"Bearer {READ}"}).json()
    assert "/v1/search/text" in schema["paths"] and "/openapi.json" not in schema["paths"]
    public = _client(public_docs=True)
    assert all(public.get(path).status_code == 200 for path in ("/openapi.json", "/docs", "/redoc"))
    open_loopback = TestClient(create_app(Settings()))  # no keys: loopback only, docs open
    assert open_loopback.get("/openapi.json").status_code == 200


def test_trailing_slashes_are_answered_in_place_never_redirected():
    client = _client()
    for path in ("/healthz/", "/healthz//"):
        response = client.get(path, headers={"Host": "evil.example"}, follow_redirects=False)
        assert response.status_code == 200 and "location" not in response.headers
    keyed = client.get("/v1/admin/config/", headers={"Authorization": f"Bearer {ADMIN}"}, follow_redirects=False)
    assert keyed.status_code == 200
