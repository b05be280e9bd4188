"""Every endpoint of a real `xmodal serve` process over HTTP, including the 4xx cases."""

from __future__ import annotations

import base64

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from tests.conftest import COCO_MINI, EDGE_UNDECODABLE, IMAGES_EDGE, requires_data
from xmodal.indexer import store

pytestmark = [pytest.mark.e2e, requires_data(COCO_MINI, IMAGES_EDGE)]
PHOTO = COCO_MINI / "images" / "000000000139.jpg"


def _file(path, name=None):
    return {"file": (name or path.name, path.read_bytes(), "application/octet-stream")}


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok", "detail": None}
    assert client.get("/readyz").json()["status"] == "ready"


def test_index_summary(client, coco_index_dir):
    summary = client.get("/v1/index").json()
    manifest = store.read_manifest(store.resolve_version(coco_index_dir))
    assert summary["images"] == 159 and summary["texts"] == 795 and summary["embed_dim"] == 32
    assert summary["fingerprint"] == manifest.model.fingerprint and summary["index_key"] == "Flat"


def test_text_search_equals_brute_force_over_stored_embeddings(client, coco_index_dir):
    query = "a living room with a television"
    response = client.post("/v1/search/text", json={"text": query, "k": 7})
    assert response.status_code == 200
    body = response.json()
    assert len(body["results"]) == 7 and body["took_ms"] > 0
    query_emb = np.array(client.post("/v1/embed/text", json={"text": query}).json()["embeddings"][0])
    version = store.resolve_version(coco_index_dir)
    stored = store.read_vectors(version, store.read_manifest(version).images.embeddings)
    exact = stored @ query_emb
    assert [hit["id"] for hit in body["results"]] == np.argsort(-exact, kind="stable")[:7].tolist()
    assert np.allclose([hit["score"] for hit in body["results"]], np.sort(exact)[::-1][:7], atol=1e-4)
    assert {"id", "score", "path", "width", "height", "sha256", "captions"} <= set(body["results"][0])


def test_image_search_finds_the_image_itself_by_upload_and_by_base64(client):
    by_upload = client.post("/v1/search/image", files=_file(PHOTO), data={"k": "3"}).json()
    encoded = base64.b64encode(PHOTO.read_bytes()).decode()
    by_json = client.post("/v1/search/image", json={"image_b64": encoded, "k": 3}).json()
    assert by_upload["results"][0]["path"] == "images/000000000139.jpg"
    assert by_upload["results"][0]["score"] > 0.999
    assert [h["id"] for h in by_upload["results"]] == [h["id"] for h in by_json["results"]]


def test_image_to_text_search_returns_captions(client):
    body = client.post("/v1/search/image", files=_file(PHOTO), data={"k": "5", "target": "texts"}).json()
    assert len(body["results"]) == 5
    hit = body["results"][0]
    assert {"id", "score", "text", "image_id", "path"} <= set(hit) and isinstance(hit["text"], str)
    item = client.get(f"/v1/items/{hit['image_id']}").json()
    assert hit["text"] in item["captions"] and hit["path"] == item["path"]


def test_embeddings_match_open_clips_reference_pipeline(client, tiny_coca_dir):
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tiny_coca_dir}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tiny_coca_dir}")
    model.eval()
    with torch.no_grad():
        ref_image = model.encode_image(preprocess(Image.open(PHOTO).convert("RGB"))[None], normalize=True)[0].numpy()
        ref_text = model.encode_text(tokenizer(["a dog on a sofa"]), normalize=True)[0].numpy()
    image_emb = np.array(client.post("/v1/embed/image", files=_file(PHOTO)).json()["embeddings"][0])
    text_body = client.post("/v1/embed/text", json={"texts": ["a dog on a sofa", "x"]}).json()
    assert text_body["dim"] == 32 and len(text_body["embeddings"]) == 2
    assert float(image_emb @ ref_image) >= 0.9999
    assert float(np.array(text_body["embeddings"][0]) @ ref_text) >= 0.9999


def test_items_and_their_image_files(client):
    item = client.get("/v1/items/0").json()
    assert item["id"] == 0 and item["width"] > 0
    image = client.get("/v1/items/0/image")
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert image.content == (COCO_MINI / item["path"]).read_bytes()
    for bad_id in ("159", "-1", "99999999999"):
        assert client.get(f"/v1/items/{bad_id}").status_code == 404
        assert client.get(f"/v1/items/{bad_id}/image").status_code == 404
    assert client.get("/v1/items/abc").status_code == 422
    assert client.get("/v1/items/..%2F..%2Fetc%2Fpasswd/image").status_code in (404, 422)


def test_openapi_and_docs(client):
    spec = client.get("/openapi.json").json()
    for path in (
        "/healthz",
        "/readyz",
        "/v1/search/text",
        "/v1/search/image",
        "/v1/embed/text",
        "/v1/embed/image",
        "/v1/items/{item_id}",
        "/v1/items/{item_id}/image",
        "/v1/index",
    ):
        assert path in spec["paths"], path
    image_body = spec["paths"]["/v1/search/image"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(image_body)
    assert "swagger" in client.get("/docs").text.lower()


@pytest.mark.parametrize(
    "request_kwargs, status, message",
    [
        ({"json": {"text": "", "k": 5}}, 422, "text is empty"),
        ({"json": {"text": "   ", "k": 5}}, 422, "text is empty"),
        ({"json": {"text": "x" * 201}}, 422, "over the limit of 200"),
        ({"json": {"text": "dog", "k": 0}}, 422, "k must be between 1 and 1000"),
        ({"json": {"text": "dog", "k": 1001}}, 422, "k must be between 1 and 1000"),
        ({"json": {"text": "dog", "k": "many"}}, 422, "k"),
        ({"json": {"k": 3}}, 422, "text"),
        ({"json": ["dog"]}, 422, ""),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, ""),
    ],
)
def test_text_search_refuses_bad_input(client, request_kwargs, status, message):
    response = client.post("/v1/search/text", **request_kwargs)
    assert response.status_code == status
    assert message in response.json()["detail"]


def test_image_endpoints_refuse_bad_input(client, tmp_path):
    cases = [
        (dict(files=_file(IMAGES_EDGE / "broken.png")), 422, "unreadable image"),
        (dict(files=_file(IMAGES_EDGE / "decompression_bomb.gif")), 413, "image too large"),
        (dict(files={"file": ("empty.png", b"", "image/png")}), 422, "empty"),
        (dict(files={"other": ("a.png", PHOTO.read_bytes(), "image/png")}), 422, "'file'"),
        (dict(content=b"hello", headers={"content-type": "text/plain"}), 415, "unsupported content type"),
        (dict(json={"image_b64": "%%%not base64%%%"}), 422, "not valid base64"),
        (dict(json={"image": "x"}), 422, "image_b64"),
        (dict(content=b"{oops", headers={"content-type": "application/json"}), 400, "not valid JSON"),
        (dict(files={"file": ("big.bin", b"\0" * 3_000_001, "image/png")}), 413, "over the limit"),
        (dict(json={"image_b64": base64.b64encode(b"\0" * 3_000_001).decode()}), 413, "over the limit"),
    ]
    search_only = [
        (dict(files=_file(PHOTO), data={"k": "0"}), 422, "k must be between"),
        (dict(files=_file(PHOTO), data={"k": "ten"}), 422, "k: Input should be a valid integer"),
        (dict(files=_file(PHOTO), data={"target": "videos"}), 422, "target"),
    ]
    for endpoint, endpoint_cases in (("/v1/search/image", cases + search_only), ("/v1/embed/image", cases)):
        for kwargs, status, message in endpoint_cases:
            response = client.post(endpoint, **kwargs)
            assert response.status_code == status, (endpoint, kwargs.keys(), response.text)
            assert message in response.json()["detail"], response.text


def _edge_requests(path):
    """Every image endpoint with this file: (what, method arguments), multipart and base64 JSON."""
    encoded = base64.b64encode(path.read_bytes()).decode()
    return [
        ("search multipart", dict(url="/v1/search/image", files=_file(path), data={"k": "2"})),
        ("search base64", dict(url="/v1/search/image", json={"image_b64": encoded, "k": 2, "target": "texts"})),
        ("embed multipart", dict(url="/v1/embed/image", files=_file(path))),
        ("caption base64", dict(url="/v1/caption", json={"image_b64": encoded, "max_tokens": 2})),
        ("vqa multipart", dict(url="/v1/vqa", files=_file(path), data={"question": "what?", "answers": '["a", "b"]'})),
        ("rank base64", dict(url="/v1/rank", json={"image_b64": encoded, "texts": ["a cat", "a dog"]})),
    ]


@requires_data(IMAGES_EDGE)
def test_every_edge_file_on_every_image_endpoint_gets_200_or_a_4xx_and_the_server_keeps_serving(client):
    """images-edge/README: decodable files work everywhere; the rest are refused with a JSON 4xx, never a 5xx."""
    wrong = []
    for path in sorted(IMAGES_EDGE.iterdir()):
        for what, kwargs in _edge_requests(path):
            response = client.post(**kwargs)
            got_4xx = 400 <= response.status_code < 500 and bool(response.json().get("detail"))
            if (not got_4xx) if path.name in EDGE_UNDECODABLE else response.status_code != 200:
                wrong.append(f"{path.name} {what}: {response.status_code} {response.text[:200]}")
    assert not wrong, "\n".join(wrong)
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
    assert len(client.post("/v1/search/text", json={"text": "a cat", "k": 3}).json()["results"]) == 3
