"""The image_url fetcher's SSRF rules, with the resolver and the HTTP transport injected."""

from __future__ import annotations

import asyncio
import gzip
import socket

import httpx
import pytest

from xmodal.app.fetch import DENIED, FetchError, FetchSlots, fetch_image, parse_networks, refusal

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
    assert error.status == 422 and "not a public host" in error.detail and "127.0.0.1" not in error.detail
    mixed = {"mixed.example.com": ["93.184.216.34", "10.0.0.7"]}
    assert "not a public host" in _status("http://mixed.example.com/", handler, mixed).detail


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
    assert error.status == 422 and "127.0.0.1 is not a public host" in error.detail


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


# Non-public ranges, each named explicitly (issue #13): the runtime's `ipaddress` calls some of them global.
DENIED_SAMPLES = [
    "0.1.2.3",  # 0/8
    "10.255.0.1",
    "100.127.255.254",  # 100.64/10
    "127.8.8.8",
    "169.254.1.1",
    "172.31.255.255",
    "192.0.0.9",  # 192.0.0/24 (is_global says True for .9)
    "192.0.2.10",
    "192.88.99.1",  # 6to4 relay anycast (is_global says True)
    "192.168.255.1",
    "198.19.0.1",  # 198.18/15
    "198.51.100.7",
    "203.0.113.9",
    "239.255.255.250",
    "250.1.1.1",
    "255.255.255.255",
    "::",
    "::1",
    "::7f00:1",  # IPv4-compatible (deprecated)
    "::ffff:169.254.169.254",
    "::ffff:192.0.0.9",
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b::c058:6301",  # NAT64 of 192.88.99.1
    "64:ff9b:1::808:808",  # local-use NAT64, even around a public IPv4
    "100::1",
    "2001::1",  # Teredo
    "2001:3::1",
    "2001:1ff:ffff::1",
    "2001:db8::1",
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "2002:c000:209::",  # 6to4 of 192.0.2.9
    "3fff::1",
    "5f00::1",
    "fc00::1",
    "fdff::1",
    "fe80::1%eth0",
    "febf::1",
    "fec0::1",  # site-local: is_global says True on this Python
    "fef0::1",
    "ff0e::1",
]


@pytest.mark.parametrize("address", DENIED_SAMPLES)
def test_every_non_public_range_is_refused(address):
    assert refusal(address), address


@pytest.mark.parametrize("address", ["2002:808:808::1", "64:ff9b::808:808", "1.1.1.1", "2a00:1450:4001::1"])
def test_public_addresses_inside_transition_prefixes_are_allowed(address):
    assert refusal(address) is None


def test_allowed_networks_open_only_what_they_name():
    allowed = parse_networks(["127.0.0.1", "10.8.0.0/24"])
    assert refusal("127.0.0.1", allowed) is None and refusal("10.8.0.9", allowed) is None
    assert refusal("127.0.0.2", allowed) and refusal("10.8.1.1", allowed) and refusal("::1", allowed)


def test_a_site_local_literal_is_never_connected_to():
    def handler(request):
        raise AssertionError("connected to fec0::1")

    error = _status("http://[fec0::1]/cat.png", handler, {"fec0::1": ["fec0::1"]})
    assert error.status == 422


def test_refusals_do_not_say_what_a_name_resolves_to():
    def handler(request):
        raise AssertionError("connected")

    table = {"db.internal": ["10.1.2.3"], "meta.internal": ["169.254.169.254"]}
    details = [_status(f"http://{host}/x.png", handler, table).detail for host in ("db.internal", "meta.internal")]

    async def unknown(host, port):
        raise socket.gaierror("Name or service not known")

    with pytest.raises(FetchError) as caught:
        asyncio.run(fetch_image("http://nope.internal/", max_bytes=10, timeout_s=5, resolver=unknown))
    details.append(caught.value.detail)
    for detail in details:
        assert not any(word in detail for word in ("10.1.2.3", "169.254", "private", "link-local", "Name or service"))
    # An existing internal name and a missing one read the same: the answer maps nothing.
    assert details[0].replace("db.internal", "H") == details[2].replace("nope.internal", "H")


def test_identity_is_asked_for_and_encoded_replies_are_refused_undecoded():
    bomb = gzip.compress(gzip.compress(b"\0" * 5_000_000))  # ~5 KB on the wire, 5 MB decoded
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("accept-encoding"))
        headers = {"content-type": "image/png", "content-encoding": "gzip, gzip"}
        return httpx.Response(200, headers=headers, content=bomb)

    error = _status("http://example.com/bomb.png", handler, {"example.com": ["93.184.216.34"]}, max_bytes=1_000_000)
    assert error.status == 502 and "identity" in error.detail and seen == ["identity"]

    def stacked(request):  # the encoding in two headers; the decoded size would pass the cap
        headers = [("content-type", "image/png"), ("content-encoding", "identity"), ("content-encoding", "br")]
        return httpx.Response(200, headers=headers, content=b"x" * 10)

    assert _status("http://example.com/", stacked, {"example.com": ["93.184.216.34"]}).status == 502

    def plain(request):
        return httpx.Response(200, headers={"content-type": "image/png", "content-encoding": "identity"}, content=PNG)

    assert _fetch("http://example.com/", plain, {"example.com": ["93.184.216.34"]}) == PNG


def test_fetch_slots_refuse_one_more_than_the_limit_with_retry_after():
    slots = FetchSlots(2)

    async def scenario():
        async with slots.slot(), slots.slot():
            with pytest.raises(FetchError) as caught:
                async with slots.slot():
                    pass
            assert caught.value.status == 503 and caught.value.headers == {"Retry-After": "1"}
        async with slots.slot():  # freed again
            assert slots.in_use == 1

    asyncio.run(scenario())
    assert slots.in_use == 0


@pytest.mark.parametrize("what, network", DENIED, ids=[str(network) for _, network in DENIED])
def test_each_denied_range_is_refused_from_its_first_to_its_last_address(what, network):
    for address in (network[0], network[-1]):
        assert refusal(str(address)), f"{address} ({what})"
