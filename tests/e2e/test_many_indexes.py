"""One `xmodal serve` with several named indexes: the coco-mini index (tiny CoCa), a tiny CLIP index and a
second tiny CoCa index (which must share the first one's loaded model). Each answers by name exactly as it
does alone; unknown names are 404; GET /v1/indexes; per-index reload with an admin key; the Python client."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import COCO_MINI, requires_data
from xmodal.app.client import XmodalClient, XmodalHTTPError
from xmodal.app.testing import Server
from xmodal.indexer import store
from xmodal.indexer.build import BuildConfig, build_index
from xmodal.models.encoders import Encoder

pytestmark = [pytest.mark.e2e, requires_data(COCO_MINI)]
PHOTO = COCO_MINI / "images" / "000000000139.jpg"
READ, ADMIN = "many-read-key-0123456789", "many-admin-key-0123456789"
ENV = {
    "XMODAL_API_KEYS": json.dumps({READ: "read", ADMIN: "admin"}),
    "XMODAL_RATE_LIMIT_RPS": "0",
    "XMODAL_RELOAD_INTERVAL_S": "0",  # swaps only through the reload routes here
}


def _photos(folder, colours):
    folder.mkdir()
    for i, colour in enumerate(colours):
        Image.new("RGB", (32, 32), colour).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def folders(coco_index_dir, tiny_coca_dir, tiny_clip_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    clip_photos = _photos(root / "clip-photos", [(200, 10, 10), (10, 200, 10), (10, 10, 200), (200, 200, 10)])
    shapes_photos = _photos(root / "shapes-photos", [(90, 90, 90), (250, 250, 250), (0, 120, 120)])
    clip = Encoder.from_spec(f"local-dir:{tiny_clip_dir}", "cpu")
    coca = Encoder.from_spec(f"local-dir:{tiny_coca_dir}", "cpu")
    build_index(BuildConfig(clip_photos, root / "clip", workers=0, progress=False), clip)
    build_index(BuildConfig(shapes_photos, root / "shapes", workers=0, progress=False), coca)
    return {
        "coco": coco_index_dir,
        "clip": root / "clip",
        "shapes": root / "shapes",
        "clip-photos": clip_photos,
        "shapes-photos": shapes_photos,
        "coca": coca,
    }


@pytest.fixture(scope="module")
def many(folders, tmp_path_factory):
    indexes = [f"{name}={folders[name]}" for name in ("coco", "clip", "shapes")]
    with Server(indexes, tmp_path_factory.mktemp("many-logs") / "server.log", env=ENV) as running:
        running.wait_ready()
        yield running


@pytest.fixture(scope="module")
def http(many):
    with httpx.Client(base_url=many.url, timeout=60, headers={"Authorization": f"Bearer {READ}"}) as client:
        yield client


def _file(path):
    return {"file": (path.name, path.read_bytes(), "application/octet-stream")}


def _stored(folder):
    version = store.resolve_version(folder)
    return store.read_vectors(version, store.read_manifest(version).images.embeddings)


def test_indexes_lists_every_index_with_its_manifest_and_each_model_once(http, many, folders):
    body = http.get("/v1/indexes").json()
    by_name = {summary["name"]: summary for summary in body["indexes"]}
    assert list(by_name) == ["coco", "clip", "shapes"]
    for name in by_name:
        version = store.resolve_version(folders[name])
        manifest = store.read_manifest(version)
        summary = by_name[name]
        assert (summary["version"], summary["model"], summary["fingerprint"]) == (
            version.name,
            manifest.model.spec,
            manifest.model.fingerprint,
        )
        assert (summary["images"], summary["index_key"], summary["search_params"]) == (
            manifest.images.count,
            manifest.images.index_key,
            manifest.images.search_params,
        )
    assert [by_name[n]["images"] for n in by_name] == [159, 4, 3]
    assert by_name["coco"]["texts"] == 795 and by_name["coco"]["texts_index_key"] == "Flat"
    assert by_name["clip"]["texts_index_key"] is None
    # Two loaded models for three indexes: coco and shapes share the tiny CoCa.
    models = {tuple(model["indexes"]): model for model in body["models"]}
    assert set(models) == {("coco", "shapes"), ("clip",)}
    assert models[("coco", "shapes")]["fingerprint"] == by_name["shapes"]["fingerprint"]
    assert "serves indexes: coco, shapes" in many.log() and many.log().count("models.loading: loaded") == 2


def test_coco_by_name_answers_exactly_as_the_server_of_coco_alone(http, client):
    query = {"text": "a living room with a television", "k": 7}
    alone = client.post("/v1/search/text", json=query).json()["results"]
    by_body = http.post("/v1/search/text", json={**query, "index": "coco"}).json()["results"]
    by_query = http.post("/v1/search/text", params={"index": "coco"}, json=query).json()["results"]
    for results in (by_body, by_query):
        assert [h["id"] for h in results] == [h["id"] for h in alone]
        assert np.allclose([h["score"] for h in results], [h["score"] for h in alone], atol=1e-5)
    by_image = http.post("/v1/search/image", files=_file(PHOTO), data={"k": "5", "target": "texts", "index": "coco"})
    assert by_image.json() | {"took_ms": 0} == client.post(
        "/v1/search/image", files=_file(PHOTO), data={"k": "5", "target": "texts"}
    ).json() | {"took_ms": 0}
    assert http.get("/v1/items/3", params={"index": "coco"}).json() == client.get("/v1/items/3").json()
    caption = http.post("/v1/caption", files=_file(PHOTO), data={"index": "coco", "max_tokens": "5"})
    assert (
        caption.json()["caption"]
        == client.post("/v1/caption", files=_file(PHOTO), data={"max_tokens": "5"}).json()["caption"]
    )


def test_clip_by_name_searches_its_own_vectors_with_its_own_model(http, folders, tiny_clip_dir):
    stored = _stored(folders["clip"])
    embedded = http.post("/v1/embed/text", json={"text": "a red square", "index": "clip"}).json()
    assert embedded["model"] == f"local-dir:{tiny_clip_dir}"
    exact = stored @ np.array(embedded["embeddings"][0])
    hits = http.post("/v1/search/text", json={"text": "a red square", "k": 4, "index": "clip"}).json()["results"]
    assert [h["id"] for h in hits] == np.argsort(-exact, kind="stable").tolist()
    assert np.allclose([h["score"] for h in hits], np.sort(exact)[::-1], atol=1e-4)
    itself = http.post("/v1/search/image", params={"index": "clip"}, files=_file(folders["clip-photos"] / "2.png"))
    assert itself.json()["results"][0]["path"] == "2.png" and itself.json()["results"][0]["score"] > 0.999
    assert (
        http.get("/v1/items/2/image", params={"index": "clip"}).content
        == (folders["clip-photos"] / "2.png").read_bytes()
    )
    ranked = http.post("/v1/rank", json={"text": "a red square", "images": [0, 3], "index": "clip"}).json()["results"]
    assert [hit["id"] for hit in ranked] == sorted([0, 3], key=lambda i: -exact[i])
    caption = http.post("/v1/caption", files=_file(PHOTO), data={"index": "clip"})  # a plain CLIP has no decoder
    assert caption.status_code == 501 and "text decoder" in caption.json()["detail"]


def test_unknown_names_are_404_and_several_indexes_need_a_name(http):
    for response in (
        http.post("/v1/search/text", json={"text": "dog", "index": "photos"}),
        http.post("/v1/search/text", params={"index": "photos"}, json={"text": "dog"}),
        http.post("/v1/search/image", files=_file(PHOTO), data={"index": "photos"}),
        http.post("/v1/embed/image", files=_file(PHOTO), params={"index": "photos"}),
        http.post("/v1/rank", json={"text": "dog", "images": [0], "index": "photos"}),
        http.get("/v1/items/0", params={"index": "photos"}),
        http.get("/v1/index", params={"index": "photos"}),
    ):
        assert response.status_code == 404, response.text
        assert response.json()["detail"] == "no index named 'photos'; this server has: coco, clip, shapes"
    unnamed = http.post("/v1/search/text", json={"text": "dog"})
    assert unnamed.status_code == 422 and "name one with `index`" in unnamed.json()["detail"]
    twice = http.post("/v1/search/text", params={"index": "coco"}, json={"text": "dog", "index": "clip"})
    assert twice.status_code == 422 and "named twice" in twice.json()["detail"]


def test_reload_is_per_index_and_needs_an_admin_key(http, many, folders):
    before = {s["name"]: s["version"] for s in http.get("/v1/indexes").json()["indexes"]}
    Image.new("RGB", (32, 32), (255, 0, 255)).save(folders["shapes-photos"] / "3.png")
    fresh = build_index(
        BuildConfig(folders["shapes-photos"], folders["shapes"], workers=0, progress=False), folders["coca"]
    )
    assert http.post("/v1/indexes/shapes/reload").status_code == 403  # a read key
    admin = {"Authorization": f"Bearer {ADMIN}"}
    assert http.post("/v1/indexes/photos/reload", headers=admin).status_code == 404
    assert http.post("/v1/indexes/coco/reload", headers=admin).json()["swapped"] is False
    swapped = http.post("/v1/indexes/shapes/reload", headers=admin).json()
    assert swapped == {"index": "shapes", "swapped": True, "previous": before["shapes"], "version": fresh.version.name}
    after = {s["name"]: s for s in http.get("/v1/indexes").json()["indexes"]}
    assert after["shapes"]["images"] == 4 and after["coco"]["version"] == before["coco"]
    assert after["clip"]["version"] == before["clip"]
    alias = http.post("/v1/admin/index/reload", params={"index": "shapes"}, headers=admin).json()
    assert alias == {"index": "shapes", "swapped": False, "previous": fresh.version.name, "version": fresh.version.name}


def test_metrics_carry_the_index_label(http):
    body = http.get("/metrics").text
    assert 'xmodal_index_vectors{index="clip",kind="images"} 4.0' in body
    assert 'xmodal_index_vectors{index="coco",kind="texts"} 795.0' in body
    assert body.count("xmodal_model_info{") == 3 and "xmodal_ready 1.0" in body
    assert body.count('xmodal_batch_queue_depth{batcher="text",') == 2  # one text batcher per loaded model


def test_client_passes_index_on_every_kind_of_call(many, folders):
    with XmodalClient(many.url, api_key=READ) as xm:
        assert [summary.name for summary in xm.indexes().indexes] == ["coco", "clip", "shapes"]
        photo = folders["clip-photos"] / "1.png"
        assert xm.search_image(photo, 1, index="clip").results[0].path == "1.png"
        assert xm.search_text("green", 4, index="clip").results.__len__() == 4
        assert (
            xm.search_vector(xm.embed_image(photo, index="clip").embeddings[0], 1, index="clip").results[0].path
            == "1.png"
        )
        assert xm.embed_text(["a", "b"], index="clip").model == xm.embed_image(photo, index="clip").model
        assert xm.item(1, index="clip").path == "1.png" and xm.item_image(1, index="clip") == photo.read_bytes()
        assert xm.index("clip").images == 4 and xm.index(index="coco").images == 159
        assert len(xm.rank_texts(photo, ["red", "green"], index="clip").results) == 2
        assert len(xm.rank_items("green", [0, 1], index="clip").results) == 2
        assert xm.vqa(photo, "what colour?", ["red", "green"], index="clip").method == "contrastive"
        assert xm.caption(PHOTO, max_tokens=3, index="shapes").caption
        with pytest.raises(XmodalHTTPError) as unknown:
            xm.search_text("green", index="photos")
        assert unknown.value.status == 404
    with XmodalClient(many.url, api_key=ADMIN) as admin:
        assert admin.reload_index("clip")["swapped"] is False
