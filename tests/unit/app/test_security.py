from __future__ import annotations

import json

import pytest

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
