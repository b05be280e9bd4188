"""API keys with scopes, the refusal to serve a public address without them, per-key rate limits, and a
throttle on failed authentication per client address.

Keys come from settings (`XMODAL_API_KEYS`, `XMODAL_API_KEYS_FILE`) and are sent as `Authorization: Bearer KEY`.
Without keys the server only starts on a loopback address (or with `XMODAL_ALLOW_UNAUTHENTICATED=true`).
A missing or wrong key spends a token of the client address's failure bucket; once it is empty, that address
gets 429 for every keyed request, right key or not (else the 429/200 difference would still answer guesses).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from xmodal.app.errors import ApiError
from xmodal.app.settings import Settings

log = logging.getLogger(__name__)

SCOPES = ("read", "admin")  # each scope includes the ones before it
MIN_KEY_CHARS = 16
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


class InsecureConfig(ValueError):
    """The settings would expose the server without authentication (or with unusable keys)."""


@dataclass(frozen=True)
class Principal:
    """Who made a request: a key (by its short id, never the key itself) or anyone when auth is off."""

    scope: str
    key_id: str | None = None

    def allows(self, needed: str) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(needed)


ANONYMOUS = Principal(scope="admin")  # auth off: the loopback-only (or explicitly allowed) server is open


def key_id(key: str) -> str:
    """A short, non-secret name for a key, for logs and rate-limit buckets."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


class KeyRing:
    """The configured keys; a presented key is compared against every one in constant time."""

    def __init__(self, keys: Mapping[str, str]):
        for key, scope in keys.items():
            if scope not in SCOPES:
                raise InsecureConfig(f"API key {key_id(key)} has scope {scope!r}; use one of {', '.join(SCOPES)}")
            if len(key) < MIN_KEY_CHARS:
                raise InsecureConfig(f"API key {key_id(key)} has {len(key)} characters; use at least {MIN_KEY_CHARS}")
        # Compare fixed-length digests so neither the length nor the content of a key leaks through timing.
        self._entries = [(hashlib.sha256(key.encode()).digest(), scope, key_id(key)) for key, scope in keys.items()]

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        keys: dict[str, str] = dict(settings.api_keys)
        if settings.api_keys_file is not None:
            try:
                loaded = json.loads(settings.api_keys_file.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise InsecureConfig(f"cannot read API keys file {settings.api_keys_file}: {exc}") from exc
            if not isinstance(loaded, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in loaded.items()
            ):
                raise InsecureConfig(
                    f'API keys file {settings.api_keys_file} must hold a JSON object {{"KEY": "read"}}'
                )
            keys.update(loaded)
        return cls(keys)

    def __len__(self) -> int:
        return len(self._entries)

    def count(self, scope: str) -> int:
        return sum(1 for _, s, _ in self._entries if s == scope)

    def lookup(self, presented: str) -> Principal | None:
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for stored, scope, kid in self._entries:  # no early exit: every key costs the same
            if hmac.compare_digest(digest, stored) and found is None:
                found = Principal(scope=scope, key_id=kid)
        return found


def is_loopback_host(host: str) -> bool:
    host = host.strip().strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings, keys: KeyRing) -> str:
    """The auth mode as a log line; InsecureConfig when a public bind would have no keys."""
    if len(keys):
        return f"auth on: {len(keys)} API keys ({keys.count('admin')} admin), rate limit {_rate_text(settings)} per key"
    if is_loopback_host(settings.host):
        return f"auth off: bound to loopback {settings.host} only; rate limit {_rate_text(settings)} per client IP"
    if settings.allow_unauthenticated:
        return (
            f"auth OFF on {settings.host} (XMODAL_ALLOW_UNAUTHENTICATED=true): anyone who can reach this "
            f"address can use every route; rate limit {_rate_text(settings)} per client IP"
        )
    raise InsecureConfig(
        f'refusing to serve on {settings.host} without API keys: set XMODAL_API_KEYS=\'{{"KEY": "read"}}\' '
        "(or XMODAL_API_KEYS_FILE), bind to 127.0.0.1, or set XMODAL_ALLOW_UNAUTHENTICATED=true if a proxy "
        "in front authenticates"
    )


def _rate_text(settings: Settings) -> str:
    if not settings.rate_limit_rps:
        return "off"
    return f"{settings.rate_limit_rps:g}/s (burst {settings.rate_limit_burst})"


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class RateLimiter:
    """Token buckets per identity: `rate` tokens a second up to `burst`; each request takes one."""

    rate: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    max_identities: int = 100_000
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def acquire(self, identity: str) -> float:
        """0 when the request may go ahead (and it took a token), else the seconds until it could."""
        return self._take(identity, spend=True)

    def wait(self, identity: str) -> float:
        """What `acquire` would answer, without taking a token."""
        return self._take(identity, spend=False)

    def _take(self, identity: str, spend: bool) -> float:
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        bucket = self._buckets.get(identity)
        if bucket is None:
            if not spend:
                return 0.0  # an unseen identity has a full bucket
            if len(self._buckets) >= self.max_identities:
                self._forget_full(now)
            bucket = self._buckets[identity] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens >= 1:
            if spend:
                bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled (forgetting them changes nothing); if none has, the oldest half."""
        full = [k for k, b in self._buckets.items() if b.tokens + (now - b.updated) * self.rate >= self.burst]
        for k in full or sorted(self._buckets, key=lambda k: self._buckets[k].updated)[: len(self._buckets) // 2]:
            del self._buckets[k]


def _too_many(what: str, wait: float) -> ApiError:
    return ApiError(429, f"{what}, retry in {wait:.2f}s", headers={"Retry-After": str(max(1, math.ceil(wait)))})


def _check_key(request: Request, keys: KeyRing) -> Principal:
    """The key's principal, or 401; failures are throttled per client address (429 once its bucket is dry)."""
    failures: RateLimiter = request.app.state.auth_failure_limiter
    address = f"ip:{request.client.host if request.client else 'unknown'}"
    wait = failures.wait(address)
    if wait > 0:
        raise _too_many("too many failed authentications from this address", wait)
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        failures.acquire(address)
        raise ApiError(
            401,
            "missing API key: send 'Authorization: Bearer KEY'",
            headers={"WWW-Authenticate": 'Bearer realm="xmodal"'},
        )
    principal = keys.lookup(presented.strip())
    if principal is None:
        failures.acquire(address)
        raise ApiError(
            401, "invalid API key", headers={"WWW-Authenticate": 'Bearer realm="xmodal", error="invalid_token"'}
        )
    return principal


def _authenticate(request: Request) -> Principal:
    keys: KeyRing = request.app.state.keys
    if not len(keys):
        principal = ANONYMOUS
        identity = f"ip:{request.client.host if request.client else 'unknown'}"
    else:
        principal = _check_key(request, keys)
        identity = f"key:{principal.key_id}"
        request.state.key_id = principal.key_id  # for the access log
    wait = request.app.state.rate_limiter.acquire(identity)
    if wait > 0:
        raise _too_many("rate limit exceeded", wait)
    return principal


def require_read(request: Request) -> Principal:
    return _authenticate(request)


def require_admin(request: Request) -> Principal:
    principal = _authenticate(request)
    if not principal.allows("admin"):
        raise ApiError(403, f"this API key has scope {principal.scope}; this route needs admin")
    return principal


ReadDep = Annotated[Principal, Depends(require_read)]
AdminDep = Annotated[Principal, Depends(require_admin)]
