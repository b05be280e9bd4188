"""The image_url fetcher's SSRF rules, with the resolver and the HTTP transport injected."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from xmodal.app.fetch import FetchError, fetch_image, refusal

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 100


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "2002:7f00:1::",
        "64:ff9b::7f00:1",
    ],
)
def test_internal_addresses_are_refused(address):
    assert refusal(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address):
    assert refusal(address) is None


def _resolver(table: dict[str, list[str]]):
    calls = []

    async def resolve(host: str, port: int) -> list[str]:
        calls.append((host, port))
        return table[host]

    resolve.calls = calls
    return resolve


def _fetch(url, handler, table, **kwargs):
    kwargs.setdefault("max_bytes", 10_000)
    kwargs.setdefault("timeout_s", 5)
    return asyncio.run(fetch_image(url, resolver=_resolver(table), transport=httpx.MockTransport(handler), **kwargs))


def _status(url, handler, table, **kwargs) -> FetchError:
    with pytest.raises(FetchError) as caught:
        _fetch(url, handler, table, **kwargs)
    return caught.value


def test_connects_to_the_checked_address_with_the_original_host_and_sni():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"content-type": "image/png"}, content=PNG)

    assert _fetch("https://images.example.com/a.png?x=1", handler, {"images.example.com": ["93.184.216.34"]}) == PNG
    request = seen[0]
    assert request.url.host == "93.184.216.34" and request.url.path == "/a.png" and request.url.query == b"x=1"
    assert request.headers["host"] == "images.example.com"
    assert request.extensions["sni_hostname"] == "images.example.com"


def test_a_public_looking_name_that_resolves_to_loopback_is_refused():
    def handler(request):  # never reached
        raise AssertionError("connected to a refused address")

    error = _status("http://innocent.example.com/cat.png", handler, {"innocent.example.com": ["127.0.0.1"]})
    assert error.status == 422 and "loopback" in error.detail
    mixed = {"mixed.example.com": ["93.184.216.34", "10.0.0.7"]}
    assert "private" in _status("http://mixed.example.com/", handler, mixed).detail


def test_each_redirect_hop_is_checked_again():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers["host"] == "public.example.com":
            return httpx.Response(302, headers={"location": "http://127.0.0.1:8000/admin"})
        raise AssertionError("followed a redirect to loopback")

    error = _status(
        "http://public.example.com/x.png",
        handler,
        {"public.example.com": ["93.184.216.34"], "127.0.0.1": ["127.0.0.1"]},
    )
    assert error.status == 422 and "127.0.0.1 is a loopback address" in error.detail


def test_redirects_are_followed_up_to_three_times():
    table = {f"h{i}.example.com": ["93.184.216.34"] for i in range(6)}

    def chain(length):
        def handler(request: httpx.Request) -> httpx.Response:
            hop = int(request.headers["host"][1])
            if hop < length:
                return httpx.Response(301, headers={"location": f"http://h{hop + 1}.example.com/img"})
            return httpx.Response(200, headers={"content-type": "image/jpeg"}, content=PNG)

        return handler

    assert _fetch("http://h0.example.com/img", chain(3), table) == PNG
    assert "more than 3" in _status("http://h0.example.com/img", chain(4), table).detail


@pytest.mark.parametrize(
    "url, needle",
    [
        ("ftp://example.com/a.png", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("http://user:pw@example.com/a.png", "credentials"),
        ("not a url", "http or https"),
    ],
)
def test_bad_urls_are_422(url, needle):
    error = _status(url, lambda r: httpx.Response(200), {"example.com": ["93.184.216.34"]})
    assert error.status == 422 and needle in error.detail


def test_content_type_size_and_upstream_errors():
    table = {"example.com": ["93.184.216.34"]}

    def html(r):
        return httpx.Response(200, headers={"content-type": "text/html"}, content=b"<html>")

    assert _status("http://example.com/", html, table).status == 422

    def big(r):
        return httpx.Response(200, headers={"content-type": "image/png"}, content=b"x" * 20_000)

    assert _status("http://example.com/", big, table).status == 413

    async def chunks():
        for _ in range(2):
            yield b"x" * 6000

    def streamed(request):  # no Content-Length: the limit applies while reading
        return httpx.Response(200, headers={"content-type": "image/png"}, content=chunks())

    assert _status("http://example.com/", streamed, table).status == 413
    assert _status("http://example.com/", lambda r: httpx.Response(404), table).status == 502

    def refused(request):
        raise httpx.ConnectError("connection refused")

    assert _status("http://example.com/", refused, table).status == 502

    def slow(request):
        raise httpx.ReadTimeout("slow")

    assert _status("http://example.com/", slow, table).status == 504


def test_the_whole_fetch_has_a_deadline():
    async def never(host, port):
        await asyncio.sleep(10)

    with pytest.raises(FetchError) as caught:
        asyncio.run(
            fetch_image(
                "http://example.com/",
                max_bytes=10,
                timeout_s=0.05,
                resolver=never,
                transport=httpx.MockTransport(lambda r: httpx.Response(200)),
            )
        )
    assert caught.value.status == 504
