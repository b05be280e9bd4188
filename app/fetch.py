"""Fetching a client's `image_url` without letting the client reach our own network (SSRF) or our memory.

Every hop: only http(s), no credentials in the URL; the host is resolved once and every address it resolves
to must be public: not in an explicit deny list of non-public IPv4 and IPv6 ranges (`DENIED`, kept here rather
than trusting the runtime's `ipaddress` tables, which call e.g. site-local fec0::/10 global), checked again on
the IPv4 address inside IPv4-mapped, NAT64 and 6to4 addresses; the connection goes to that checked IP, with the
original Host header and TLS server name, so DNS cannot change between the check and the connect. Redirects are
followed by hand (at most 3), each hop checked again. The body is asked for and read as `identity` (raw bytes,
never decoded: a 590-byte gzip bomb must not become 557 MiB), must be image/* and within `max_bytes`, and the
whole fetch within `timeout_s`. `FetchSlots` bounds how many fetches run at once. Every failure is a FetchError
with an HTTP status for the client, whose text never says what an internal name resolves to.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from functools import lru_cache

import httpx

log = logging.getLogger(__name__)

Resolver = Callable[[str, int], Awaitable[list[str]]]  # (host, port) -> IP address strings
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_REDIRECTS = 3
_REDIRECTS = {301, 302, 303, 307, 308}
_NET = ipaddress.ip_network

# Never fetched from, whatever `ipaddress` thinks (IANA special-purpose registries, RFC 6890 and successors).
DENIED: tuple[tuple[str, IPNetwork], ...] = (
    ("this network", _NET("0.0.0.0/8")),
    ("private (10/8)", _NET("10.0.0.0/8")),
    ("shared CGNAT", _NET("100.64.0.0/10")),
    ("loopback", _NET("127.0.0.0/8")),
    ("link-local", _NET("169.254.0.0/16")),
    ("private (172.16/12)", _NET("172.16.0.0/12")),
    ("IETF protocol assignments", _NET("192.0.0.0/24")),
    ("documentation (TEST-NET-1)", _NET("192.0.2.0/24")),
    ("6to4 relay anycast (deprecated)", _NET("192.88.99.0/24")),
    ("private (192.168/16)", _NET("192.168.0.0/16")),
    ("benchmarking", _NET("198.18.0.0/15")),
    ("documentation (TEST-NET-2)", _NET("198.51.100.0/24")),
    ("documentation (TEST-NET-3)", _NET("203.0.113.0/24")),
    ("multicast", _NET("224.0.0.0/4")),
    ("reserved (240/4)", _NET("240.0.0.0/4")),
    ("limited broadcast", _NET("255.255.255.255/32")),
    ("IPv4-compatible IPv6 (deprecated)", _NET("::/96")),  # holds ::/128 (unspecified) and ::1 (loopback)
    ("IPv6 loopback", _NET("::1/128")),
    ("local-use NAT64", _NET("64:ff9b:1::/48")),
    ("discard-only", _NET("100::/64")),
    ("IETF protocol assignments (incl. Teredo)", _NET("2001::/23")),
    ("documentation (2001:db8::/32)", _NET("2001:db8::/32")),
    ("documentation (3fff::/20)", _NET("3fff::/20")),
    ("segment routing SIDs", _NET("5f00::/16")),
    ("unique local", _NET("fc00::/7")),
    ("link-local", _NET("fe80::/10")),
    ("site-local (deprecated)", _NET("fec0::/10")),
    ("multicast", _NET("ff00::/8")),
)
_MAPPED = _NET("::ffff:0:0/96")  # IPv4-mapped: the embedded IPv4 address decides
_NAT64 = _NET("64:ff9b::/96")  # well-known NAT64 prefix: the embedded IPv4 address decides
_SIXTOFOUR = _NET("2002::/16")  # 6to4: the embedded IPv4 address decides


class FetchError(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


class FetchSlots:
    """At most `limit` image_url fetches at once; one more is refused at once (503 with Retry-After),
    so slow or stalling remote hosts cannot pile up sockets, memory and event-loop work."""

    def __init__(self, limit: int, retry_after_s: int = 1):
        self.limit, self.retry_after_s, self.in_use = limit, retry_after_s, 0

    @asynccontextmanager
    async def slot(self):
        if self.in_use >= self.limit:
            raise FetchError(
                503,
                f"too many image_url fetches at once (limit {self.limit}); retry shortly or send image_b64",
                headers={"Retry-After": str(self.retry_after_s)},
            )
        self.in_use += 1
        try:
            yield
        finally:
            self.in_use -= 1


@lru_cache
def fetch_slots(limit: int) -> FetchSlots:
    """The process's gate for `limit` (one server per process: XMODAL_IMAGE_URL_MAX_CONCURRENT)."""
    return FetchSlots(limit)


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Networks from strings such as "10.1.2.0/24" or "127.0.0.1" (one address)."""
    return tuple(ipaddress.ip_network(value.strip(), strict=False) for value in values)


def refusal(address: str, allowed: tuple[IPNetwork, ...] = ()) -> str | None:
    """Why `address` may not be fetched from, or None when it is a public unicast address (or inside one of
    the operator's `allowed` networks)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return f"{address} is not an IP address"
    if any(ip in network for network in allowed if network.version == ip.version):
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = None
        if ip in _MAPPED or ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        elif ip in _SIXTOFOUR:
            embedded = ipaddress.IPv4Address((int(ip) >> 80) & 0xFFFFFFFF)
        if embedded is not None:
            reason = refusal(str(embedded), allowed)
            return f"{ip} embeds {reason}" if reason else None
    for what, network in DENIED:
        if network.version == ip.version and ip in network:
            return f"{ip} is a {what} address ({network})"
    if ip.is_multicast or ip.is_private or ip.is_reserved or ip.is_link_local or not ip.is_global:
        return f"{ip} is not a public address"  # the runtime's tables, as a second opinion
    return None


def _check_url(url: httpx.URL) -> None:
    if url.scheme not in ("http", "https"):
        raise FetchError(422, f"image_url must be http or https, not {url.scheme or '(none)'}")
    if not url.host:
        raise FetchError(422, "image_url has no host")
    if url.userinfo:
        raise FetchError(422, "image_url must not carry credentials")


async def _resolve_checked(url: httpx.URL, resolver: Resolver, allowed: tuple[IPNetwork, ...]) -> str:
    """The address to connect to. A refusal says neither what the name resolves to nor whether it resolves
    at all (that would map the internal network for the caller); the reason goes to our log."""
    port = url.port or (443 if url.scheme == "https" else 80)
    refused = FetchError(422, f"image_url refused: {url.host} is not a public host (or does not resolve)")
    try:
        addresses = await resolver(url.host, port)
    except (OSError, UnicodeError) as exc:
        log.info("image_url host %r does not resolve: %s", url.host, exc)
        raise refused from exc
    if not addresses:
        log.info("image_url host %r resolves to no address", url.host)
        raise refused
    for address in addresses:  # all of them: a name must not mix public and internal addresses
        reason = refusal(address, allowed)
        if reason:
            log.info("image_url host %r refused: %s", url.host, reason)
            raise refused
    return addresses[0]


async def fetch_image(
    url: str,
    *,
    max_bytes: int,
    timeout_s: float,
    resolver: Resolver = system_resolver,
    transport: httpx.AsyncBaseTransport | None = None,
    max_redirects: int = MAX_REDIRECTS,
    allowed: tuple[IPNetwork, ...] = (),
) -> bytes:
    """The image bytes at `url`, or FetchError (422 refused/invalid, 413 too big, 502 upstream, 504 timeout).
    `allowed`: networks the operator trusts despite the deny list (XMODAL_IMAGE_URL_ALLOWED_NETWORKS)."""
    try:
        current = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise FetchError(422, f"image_url is not a valid URL: {exc}") from exc
    try:
        async with asyncio.timeout(timeout_s):
            # trust_env=False: an environment proxy would connect to the name, not the address we checked.
            async with httpx.AsyncClient(
                transport=transport, trust_env=False, follow_redirects=False, timeout=timeout_s
            ) as client:
                for _ in range(max_redirects + 1):
                    result = await _fetch_once(client, current, resolver, max_bytes, allowed)
                    if isinstance(result, bytes):
                        return result
                    current = result
                raise FetchError(422, f"image_url redirected more than {max_redirects} times")
    except TimeoutError as exc:
        raise FetchError(504, f"image_url took longer than {timeout_s:g}s") from exc
    except httpx.TimeoutException as exc:
        raise FetchError(504, f"image_url timed out: {exc}") from exc
    except httpx.HTTPError as exc:
        raise FetchError(502, f"image_url could not be fetched: {type(exc).__name__}: {exc}") from exc


async def _fetch_once(
    client: httpx.AsyncClient, url: httpx.URL, resolver: Resolver, max_bytes: int, allowed: tuple[IPNetwork, ...]
) -> bytes | httpx.URL:
    """One hop: the body, or the next URL to go to."""
    _check_url(url)
    address = await _resolve_checked(url, resolver, allowed)
    pinned = url.copy_with(host=address)
    headers = {"Host": url.netloc.decode("ascii"), "Accept": "image/*", "Accept-Encoding": "identity"}
    extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
    request = client.build_request("GET", pinned, headers=headers, extensions=extensions)
    response = await client.send(request, stream=True)
    try:
        if response.status_code in _REDIRECTS:
            location = response.headers.get("location")
            if not location:
                raise FetchError(502, f"image_url answered {response.status_code} without a Location")
            return url.join(location)
        if response.status_code != 200:
            raise FetchError(502, f"image_url answered HTTP {response.status_code}")
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if not content_type.startswith("image/"):
            raise FetchError(422, f"image_url is {content_type or 'of no content type'}, not an image/* type")
        encodings = [e.strip().lower() for e in response.headers.get_list("content-encoding", split_commas=True)]
        if any(e not in ("", "identity") for e in encodings):  # we asked for identity; never inflate a reply
            raise FetchError(
                502, f"image_url answered Content-Encoding {', '.join(encodings)}; only identity is accepted"
            )
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise FetchError(413, f"image_url is {int(declared):,} bytes, over the limit of {max_bytes:,}")
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():  # identity only (checked above): nothing inflates
            size += len(chunk)
            if size > max_bytes:
                raise FetchError(413, f"image_url is over the limit of {max_bytes:,} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        await response.aclose()
