"""Fetching a client's `image_url` without letting the client reach our own network (SSRF).

Every hop: only http(s), no credentials in the URL; the host is resolved once and every address it resolves
to must be public (not loopback, private, link-local, multicast, reserved, unspecified, shared, nor such an
address inside IPv4-mapped, 6to4 or NAT64 IPv6); the connection goes to that checked IP, with the original
Host header and TLS server name, so DNS cannot change between the check and the connect. Redirects are
followed by hand (at most 3), each hop checked again. The body must be image/* and within `max_bytes`, and the
whole fetch within `timeout_s`. Every failure is a FetchError with an HTTP status for the client.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable

import httpx

Resolver = Callable[[str, int], Awaitable[list[str]]]  # (host, port) -> IP address strings

MAX_REDIRECTS = 3
_REDIRECTS = {301, 302, 303, 307, 308}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class FetchError(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def refusal(address: str) -> str | None:
    """Why `address` may not be fetched from, or None when it is a public unicast address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return f"{address} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = (
            ip.ipv4_mapped or ip.sixtofour or (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None)
        )
        if embedded is not None:
            reason = refusal(str(embedded))
            return f"{ip} embeds {reason}" if reason else None
        if ip.teredo:
            return f"{ip} is a Teredo tunnel address"
    for what, flag in (
        ("loopback", ip.is_loopback),
        ("unspecified", ip.is_unspecified),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
    ):
        if flag:
            return f"{ip} is a {what} address"
    if not ip.is_global:
        return f"{ip} is not a public address"
    return None


def _check_url(url: httpx.URL) -> None:
    if url.scheme not in ("http", "https"):
        raise FetchError(422, f"image_url must be http or https, not {url.scheme or '(none)'}")
    if not url.host:
        raise FetchError(422, "image_url has no host")
    if url.userinfo:
        raise FetchError(422, "image_url must not carry credentials")


async def _resolve_checked(url: httpx.URL, resolver: Resolver) -> str:
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        addresses = await resolver(url.host, port)
    except (OSError, UnicodeError) as exc:
        raise FetchError(422, f"image_url host {url.host} does not resolve: {exc}") from exc
    if not addresses:
        raise FetchError(422, f"image_url host {url.host} does not resolve")
    for address in addresses:  # all of them: a name must not mix public and internal addresses
        reason = refusal(address)
        if reason:
            raise FetchError(422, f"image_url refused: {url.host} resolves to {reason}")
    return addresses[0]


async def fetch_image(
    url: str,
    *,
    max_bytes: int,
    timeout_s: float,
    resolver: Resolver = system_resolver,
    transport: httpx.AsyncBaseTransport | None = None,
    max_redirects: int = MAX_REDIRECTS,
) -> bytes:
    """The image bytes at `url`, or FetchError (422 refused/invalid, 413 too big, 502 upstream, 504 timeout)."""
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
                    result = await _fetch_once(client, current, resolver, max_bytes)
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
    client: httpx.AsyncClient, url: httpx.URL, resolver: Resolver, max_bytes: int
) -> bytes | httpx.URL:
    """One hop: the body, or the next URL to go to."""
    _check_url(url)
    address = await _resolve_checked(url, resolver)
    pinned = url.copy_with(host=address)
    headers = {"Host": url.netloc.decode("ascii"), "Accept": "image/*"}
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
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise FetchError(413, f"image_url is {int(declared):,} bytes, over the limit of {max_bytes:,}")
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise FetchError(413, f"image_url is over the limit of {max_bytes:,} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        await response.aclose()
