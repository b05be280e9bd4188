"""The web page at `/` in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) against a
real `xmodal serve`. Oracle: the JSON API itself, called with the same query; no console error is allowed
beyond the failed requests a test provokes on purpose.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import httpx
import pytest
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from tests.conftest import COCO_MINI, requires_data
from xmodal.app.testing import Server, run_xmodal

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.e2e,
    requires_data(COCO_MINI),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium: apt-get install -y chromium"),
]
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHOTO = COCO_MINI / "images" / "000000000139.jpg"
OTHER_PHOTO = COCO_MINI / "images" / "000000000790.jpg"
QUERY = "a dog on a beach"
KEY = "web-page-key-0123456789abcdef"
expect.set_options(timeout=60_000)  # a model call on a busy 2-core machine can take seconds


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def console() -> list[str]:
    """The page's console errors and uncaught exceptions; a test removes the ones it provoked."""
    return []


@pytest.fixture
def page(browser, console):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.on("console", lambda message: message.type == "error" and console.append(message.text))
    tab.on("pageerror", lambda error: console.append(f"uncaught: {error}"))
    yield tab
    context.close()
    assert console == [], f"console errors: {console}"


def _card_ids(page) -> list[int]:
    return page.locator("#results .card").evaluate_all("cards => cards.map(card => Number(card.dataset.id))")


def _wait_thumbnails(page, count: int) -> list[list[int]]:
    """Waits until `count` thumbnails are decoded; their natural sizes."""
    expect(page.locator("#results .card img")).to_have_count(count)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth)"
    )
    return page.locator("#results img").evaluate_all("imgs => imgs.map(i => [i.naturalWidth, i.naturalHeight])")


def _search_text(page, text: str, k: int) -> None:
    page.fill("#k", str(k))
    page.fill("#query", text)
    page.press("#query", "Enter")


def _provoked(console: list[str], status: int, count: int) -> None:
    """Chromium logs every failed fetch as a console error: take out the ones a test caused on purpose."""
    expected = [m for m in console if f"status of {status}" in m]
    assert len(expected) == count, console
    for message in expected:
        console.remove(message)


def test_page_is_static_with_a_strict_policy_and_shows_the_index(page, server):
    response = page.goto(server.url + "/")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    expect(page.locator("#index-info")).to_contain_text("159 images · 795 captions")
    expect(page.locator("#index-info")).to_contain_text("local-dir:")
    expect(page.locator("#index-pick")).to_be_hidden()  # one index: no choice to make
    for name, kind in [("app.js", "text/javascript"), ("style.css", "text/css")]:
        asset = httpx.get(f"{server.url}/static/{name}")
        assert asset.headers["content-type"].startswith(kind) and asset.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(server.url + "/static/index.html").status_code == 404  # only the listed assets
    assert "/" not in httpx.get(server.url + "/openapi.json").json()["paths"]  # the page is not an API route


def test_text_search_shows_the_apis_results_with_their_images(page, server, client):
    page.goto(server.url + "/")
    _search_text(page, QUERY, 7)
    expect(page.locator("#status")).to_contain_text(f"7 results for “{QUERY}”")
    want = client.post("/v1/search/text", json={"text": QUERY, "k": 7}).json()["results"]
    assert _card_ids(page) == [hit["id"] for hit in want]
    assert _wait_thumbnails(page, 7) == [[hit["width"], hit["height"]] for hit in want]  # each item's own file
    assert page.locator("#results img").first.get_attribute("src").startswith("blob:")
    assert page.locator("#results .score").first.text_content() == f"{want[0]['score']:.3f}"
    expect(page.locator("#results .card").first).to_contain_text(want[0]["captions"][0])


def test_an_uploaded_or_dropped_image_shows_similar_images_and_captions(page, server, client, tmp_path):
    page.goto(server.url + "/")
    page.fill("#k", "6")
    page.set_input_files("#file", str(PHOTO))
    expect(page.locator("#status")).to_contain_text(f"6 results for the image {PHOTO.name}")
    photo = {"file": (PHOTO.name, PHOTO.read_bytes(), "image/jpeg")}
    images = client.post("/v1/search/image", files=photo, data={"k": "6"}).json()["results"]
    assert _card_ids(page) == [hit["id"] for hit in images]
    texts = client.post("/v1/search/image", files=photo, data={"k": "6", "target": "texts"}).json()["results"]
    expect(page.locator("#texts li")).to_have_count(6)
    assert page.locator("#texts .text").all_text_contents() == [t["text"] for t in texts]
    _wait_thumbnails(page, 6)
    page.click("#caption")
    expect(page.locator("#answer-label")).to_have_text("Caption:")
    expect(page.locator("#answer-text")).not_to_have_text("…")
    page.screenshot(path=tmp_path / "web-page.png", full_page=True)  # for a person to look at (see the README)

    # Drag and drop: a file dropped on the zone is a new query.
    dropped = page.evaluate_handle(
        """([b64, name]) => {
            const transfer = new DataTransfer();
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            transfer.items.add(new File([bytes], name, {type: "image/jpeg"}));
            return transfer;
        }""",
        [base64.b64encode(OTHER_PHOTO.read_bytes()).decode(), OTHER_PHOTO.name],
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": dropped})
    expect(page.locator("#status")).to_contain_text(f"for the image {OTHER_PHOTO.name}")
    other = {"file": (OTHER_PHOTO.name, OTHER_PHOTO.read_bytes(), "image/jpeg")}
    assert _card_ids(page) == [
        hit["id"] for hit in client.post("/v1/search/image", files=other, data={"k": "6"}).json()["results"]
    ]
    expect(page.locator("#answer")).to_be_hidden()  # the old image's caption is gone


def test_caption_and_ask_show_the_models_answers(page, server, client):
    page.goto(server.url + "/")
    page.set_input_files("#file", str(PHOTO))
    photo = {"file": (PHOTO.name, PHOTO.read_bytes(), "image/jpeg")}
    caption = client.post("/v1/caption", files=photo).json()["caption"]
    assert caption  # the tiny CoCa writes something
    page.click("#caption")
    expect(page.locator("#answer-text")).to_have_text(caption)
    page.fill("#question", "what is in the room?")
    page.click("#ask")
    answer = client.post("/v1/vqa", files=photo, data={"question": "what is in the room?"}).json()["answer"]
    expect(page.locator("#answer-label")).to_have_text("Answer:")
    expect(page.locator("#answer-text")).to_have_text(answer)


def test_api_errors_show_the_servers_message(page, server, console):
    page.goto(server.url + "/")
    expect(page.locator("#index-info")).to_contain_text("159 images")
    _search_text(page, "", 5)
    expect(page.locator("#status")).to_have_text("Error 422: text is empty")
    expect(page.locator("#status")).to_have_class("error")
    _search_text(page, QUERY, 5000)
    expect(page.locator("#status")).to_have_text("Error 422: k must be between 1 and 1000, got 5000")
    _provoked(console, 422, 2)


@pytest.fixture(scope="module")
def clip_index_dir(tiny_clip_dir, coco_index_dir, tmp_path_factory):
    """A plain CLIP index of coco-mini's last three photos (so its item ids name other photos than coco's)."""
    photos = tmp_path_factory.mktemp("web-photos")
    for path in sorted((COCO_MINI / "images").glob("*.jpg"))[-3:]:
        shutil.copy(path, photos)
    out = tmp_path_factory.mktemp("web-clip-index")
    built = run_xmodal(
        "index", photos, "--out", out, "--model", f"local-dir:{tiny_clip_dir}", "--workers", "0", "--no-progress"
    )
    assert built.returncode == 0, built.stderr
    return out


@pytest.fixture(scope="module")
def keyed_clip_server(clip_index_dir, tmp_path_factory):
    """The plain CLIP index behind an API key."""
    env = {"XMODAL_API_KEYS": json.dumps({KEY: "read"}), "XMODAL_RATE_LIMIT_RPS": "0"}
    with Server(clip_index_dir, tmp_path_factory.mktemp("web-logs") / "server.log", env=env) as running:
        running.wait_ready()
        yield running


def test_with_keys_the_page_loads_sends_the_key_and_explains_a_model_without_decoder(page, keyed_clip_server, console):
    url = keyed_clip_server.url
    assert page.goto(url + "/").status == 200  # the page itself needs no key
    expect(page.locator("#index-info")).to_contain_text("needs an API key")
    page.fill("#api-key", KEY)
    page.click("#key-form button")
    expect(page.locator("#index-info")).to_contain_text("3 images")
    page.reload()  # the key stays in this browser
    expect(page.locator("#index-info")).to_contain_text("3 images")
    _search_text(page, QUERY, 3)
    _wait_thumbnails(page, 3)  # fetched with the key: <img src> alone would get a 401

    page.set_input_files("#file", str(PHOTO))
    expect(page.locator("#caption")).to_be_enabled()
    page.click("#caption")
    expect(page.locator("#tools-note")).to_contain_text("plain CLIP")
    expect(page.locator("#tools-note")).to_contain_text("The server said:")
    for control in ("#caption", "#question", "#ask"):
        expect(page.locator(control)).to_be_disabled()
    _provoked(console, 401, 1)
    _provoked(console, 501, 1)


@pytest.fixture(scope="module")
def two_indexes(coco_index_dir, clip_index_dir, tmp_path_factory):
    """coco (tiny CoCa, with captions) and clip (tiny CLIP, none), and no index named default: every call
    that reads an index must name one (a 422 otherwise, which the console check would catch)."""
    indexes = [f"coco={coco_index_dir}", f"clip={clip_index_dir}"]
    log = tmp_path_factory.mktemp("web-many-logs") / "server.log"
    with Server(indexes, log, env={"XMODAL_RATE_LIMIT_RPS": "0"}) as running:
        running.wait_ready()
        with httpx.Client(base_url=running.url, timeout=60) as http:
            yield running, http


def test_several_indexes_a_select_picks_the_index_searched_thumbnailed_and_captioned(
    page, two_indexes, console, tmp_path
):
    server, http = two_indexes
    photo = {"file": (PHOTO.name, PHOTO.read_bytes(), "image/jpeg")}
    page.goto(server.url + "/")
    expect(page.locator("#index-select option")).to_have_text(["coco", "clip"])
    expect(page.locator("#index-select")).to_have_value("coco")  # nothing saved and none named default: the first
    expect(page.locator("#index-info")).to_contain_text("159 images · 795 captions")

    for name, count in [("coco", 5), ("clip", 3)]:  # clip: the same query again, on its three photos
        if name == "clip":
            page.select_option("#index-select", "clip")
            expect(page.locator("#index-info")).to_contain_text("3 images · local-dir:")
        else:
            _search_text(page, QUERY, 5)
        expect(page.locator("#status")).to_contain_text(f"{count} results for “{QUERY}” from {name}")
        want = http.post("/v1/search/text", json={"text": QUERY, "k": 5, "index": name}).json()["results"]
        assert len(want) == count and _card_ids(page) == [hit["id"] for hit in want]
        # That index's own files. (The sizes are the files', not the hits': `xmodal index` with draft decoding, as
        # clip was built, records the draft-decoded size.)
        files = [Image.open(COCO_MINI / "images" / Path(hit["path"]).name).size for hit in want]
        assert _wait_thumbnails(page, count) == [list(size) for size in files]

    # An image on clip: its similar images, no captions (clip has none); its model has no caption decoder.
    page.set_input_files("#file", str(PHOTO))
    expect(page.locator("#status")).to_contain_text(f"3 results for the image {PHOTO.name} from clip")
    want = http.post("/v1/search/image", files=photo, data={"k": "5", "index": "clip"}).json()["results"]
    assert _card_ids(page) == [hit["id"] for hit in want]
    expect(page.locator("#texts-section")).to_be_hidden()
    page.click("#caption")
    expect(page.locator("#tools-note")).to_contain_text("the model of the index clip has none (plain CLIP)")
    for control in ("#caption", "#question", "#ask"):
        expect(page.locator(control)).to_be_disabled()
    page.screenshot(path=tmp_path / "web-page-clip.png", full_page=True)

    # Back to coco (a CoCa): the image is searched there, its captions shown, and Caption works again.
    page.select_option("#index-select", "coco")
    expect(page.locator("#status")).to_contain_text(f"5 results for the image {PHOTO.name} from coco")
    want = http.post("/v1/search/image", files=photo, data={"k": "5", "index": "coco"}).json()["results"]
    assert _card_ids(page) == [hit["id"] for hit in want]
    texts = http.post("/v1/search/image", files=photo, data={"k": "5", "target": "texts", "index": "coco"}).json()
    expect(page.locator("#texts .text")).to_have_text([hit["text"] for hit in texts["results"]])
    expect(page.locator("#caption")).to_be_enabled()
    expect(page.locator("#tools-note")).to_have_text("")
    page.click("#caption")
    caption = http.post("/v1/caption", files=photo, data={"index": "coco"}).json()["caption"]
    expect(page.locator("#answer-text")).to_have_text(caption)
    _wait_thumbnails(page, 5)
    page.screenshot(path=tmp_path / "web-page-indexes.png", full_page=True)  # for a person to look at

    # The choice stays in this browser; a saved name the server no longer serves falls back to the first.
    page.select_option("#index-select", "clip")
    page.reload()
    expect(page.locator("#index-select")).to_have_value("clip")
    expect(page.locator("#index-info")).to_contain_text("3 images")
    page.evaluate("() => localStorage.setItem('xmodal.index', 'gone')")
    page.reload()
    expect(page.locator("#index-select")).to_have_value("coco")
    expect(page.locator("#index-info")).to_contain_text("159 images")
    _provoked(console, 501, 1)
