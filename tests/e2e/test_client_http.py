"""app/client.py against a real `xmodal serve`: every method once, sync and async."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from PIL import Image

from tests.conftest import COCO_MINI, requires_data
from xmodal.app.client import AsyncXmodalClient, XmodalClient, XmodalHTTPError
from xmodal.app.schemas import ImageHit, TextHit

pytestmark = [pytest.mark.e2e, requires_data(COCO_MINI)]
PHOTO = COCO_MINI / "images" / "000000000139.jpg"


@pytest.fixture(scope="module")
def xm(server):
    with XmodalClient(server.url) as client:
        yield client


def test_search_methods(xm):
    by_text = xm.search_text("a living room", 5, offset=1, min_score=-1.0, filters={"width": {"gte": 1}})
    assert len(by_text.results) == 5 and all(isinstance(h, ImageHit) for h in by_text.results)
    by_image = xm.search_image(PHOTO, 3)
    assert by_image.results[0].path == "images/000000000139.jpg" and by_image.results[0].score > 0.999
    captions = xm.search_image(Image.open(PHOTO), 2, target="texts")
    assert len(captions.results) == 2 and isinstance(captions.results[0], TextHit)
    vector = xm.embed_image(PHOTO.read_bytes()).embeddings[0]
    by_vector = xm.search_vector(np.array(vector), 3, dedup=0.99)
    assert by_vector.results[0].id == by_image.results[0].id


def test_embed_rank_items_and_index(xm):
    texts = xm.embed_text(["a cat", "a dog"])
    assert len(texts.embeddings) == 2 and texts.dim == 32
    assert len(xm.embed_text("a cat").embeddings) == 1
    assert xm.embed_image(PHOTO).dim == 32
    ranked = xm.rank_texts(PHOTO, ["a cat", "a living room", "a plane"])
    assert sorted(hit.position for hit in ranked.results) == [0, 1, 2]
    assert [h.score for h in ranked.results] == sorted((h.score for h in ranked.results), reverse=True)
    assert {hit.id for hit in xm.rank_items("a living room", [0, 5, 9]).results} == {0, 5, 9}
    item = xm.item(0)
    assert xm.item_image(0) == (COCO_MINI / item.path).read_bytes()
    assert xm.index().images == 159


def test_caption_vqa_health_and_admin(xm):
    assert xm.caption(PHOTO, max_tokens=5).caption
    assert xm.vqa(PHOTO, "what room is this?", ["kitchen", "living room"]).method == "likelihood"
    assert xm.health().status == "ok" and xm.ready().status == "ready"
    assert xm.admin_config()["max_k"] == 1000
    assert xm.reload_index()["swapped"] is False


def test_errors_carry_the_status_and_the_servers_detail(xm):
    with pytest.raises(XmodalHTTPError) as raised:
        xm.item(99999)
    assert raised.value.status == 404 and raised.value.detail == "no item with id 99999" and raised.value.request_id
    with pytest.raises(XmodalHTTPError, match="422: text is empty"):
        xm.search_text(" ")


def test_async_client(server):
    async def main():
        async with AsyncXmodalClient(server.url) as client:
            return await asyncio.gather(client.search_text("a dog", 2), client.index(), client.ready())

    hits, summary, ready = asyncio.run(main())
    assert len(hits.results) == 2 and summary.texts == 795 and ready.status == "ready"
