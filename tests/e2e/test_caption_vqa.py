"""/v1/caption and /v1/vqa on a real `xmodal serve`, and the `xmodal caption` / `xmodal ask` commands.

The CoCa server is the session's coco-mini index (tiny CoCa, limits from conftest.LIMITS:
200 characters of text); a plain CLIP index is built here. Oracles: CocaDecoder and open_clip
run directly in the test process on the same preprocessed image.
"""

from __future__ import annotations

import base64
import dataclasses
import json

import httpx
import open_clip
import pytest
import torch
from PIL import Image

from tests.conftest import COCO_MINI, IMAGES_EDGE, requires_data
from xmodal.app.testing import Server, run_xmodal
from xmodal.models.decoding import CocaDecoder, DecodeOptions
from xmodal.models.images import load_image
from xmodal.models.loading import load_model

pytestmark = [pytest.mark.e2e, requires_data(COCO_MINI, IMAGES_EDGE)]
PHOTO = COCO_MINI / "images" / "000000000139.jpg"
QUESTION = "what is in the room?"
ANSWERS = ["a television", "a dog", "two chairs", "nothing", "a red car"]


def _file(path, name=None):
    return {"file": (name or path.name, path.read_bytes(), "application/octet-stream")}


def _b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope="module")
def coca(tiny_coca_dir):
    """The served CoCa, loaded here, with the server's preprocessing of PHOTO."""
    loaded = load_model(f"local-dir:{tiny_coca_dir}", "cpu", threads=1)
    pixels = loaded.preprocess(load_image(PHOTO.read_bytes()))[None]
    return CocaDecoder(loaded.model, loaded.tokenizer), pixels


def _direct_texts(coca, **options) -> list[str]:
    decoder, pixels = coca
    return [c.text for c in decoder.generate(pixels, DecodeOptions(**options))[0]]


# ---------------------------------------------------------------- captions


def test_caption_is_deterministic_and_equals_the_decoder(client, coca):
    first = client.post("/v1/caption", files=_file(PHOTO))
    assert first.status_code == 200, first.text
    body = first.json()
    assert set(body) == {"caption", "language", "took_ms"} and body["took_ms"] > 0
    assert body["caption"] and body["caption"] == _direct_texts(coca)[0]
    assert client.post("/v1/caption", files=_file(PHOTO)).json()["caption"] == body["caption"]
    assert client.post("/v1/caption", json={"image_b64": _b64(PHOTO)}).json()["caption"] == body["caption"]
    short = client.post("/v1/caption", json={"image_b64": _b64(PHOTO), "max_tokens": 3, "prompt": "a photo of"})
    assert short.json()["caption"] == _direct_texts(coca, max_new_tokens=3, prefix="a photo of")[0]


def test_a_default_caption_is_not_cut_at_a_fixed_length(client, coca):
    """Without max_tokens a caption runs to end-of-text or the full context; no fixed cap (it was 20) cuts it."""
    decoder, pixels = coca
    room = decoder.context_length - 1  # after the start token
    best = decoder.generate(pixels, DecodeOptions())[0][0]
    # The tiny model's random weights never reach end-of-text here: the caption fills the context.
    assert len(best.token_ids) == room > 20 and not best.finished
    default = client.post("/v1/caption", json={"image_b64": _b64(PHOTO)}).json()["caption"]
    assert default == client.post("/v1/caption", json={"image_b64": _b64(PHOTO), "max_tokens": None}).json()["caption"]
    assert default == best.text
    cut = client.post("/v1/caption", files=_file(PHOTO), data={"max_tokens": "20"}).json()["caption"]
    assert cut == _direct_texts(coca, max_new_tokens=20)[0] and len(cut) < len(default)


def test_caption_alternatives_by_beam_search_and_seeded_sampling(client, coca):
    beam = client.post("/v1/caption", files=_file(PHOTO), data={"mode": "beam", "alternatives": "3", "max_tokens": "8"})
    assert beam.status_code == 200, beam.text
    alternatives = beam.json()["alternatives"]
    assert [a["text"] for a in alternatives] == _direct_texts(
        coca, mode="beam", num_beams=3, num_return_sequences=3, max_new_tokens=8
    )
    assert beam.json()["caption"] == alternatives[0]["text"]
    scores = [a["score"] for a in alternatives]
    assert scores == sorted(scores, reverse=True) and all(s < 0 for s in scores)

    sample = {"image_b64": _b64(PHOTO), "mode": "sample", "seed": 5, "alternatives": 2, "top_k": 50}
    first, second = (client.post("/v1/caption", json=sample).json() for _ in range(2))
    assert first == {**second, "took_ms": first["took_ms"]} and len(first["alternatives"]) == 2


def test_caption_refuses_bad_options(client):
    cases = [
        ({"mode": "fast"}, "mode"),
        ({"max_tokens": "many"}, "max_tokens"),
        ({"max_tokens": "41"}, "max_tokens must be between 1 and 40"),
        ({"max_tokens": "0"}, "max_tokens must be between 1 and 40"),
        ({"mode": "sample", "alternatives": "6"}, "alternatives must be between 0 and 5"),
        ({"mode": "beam", "beams": "9"}, "beams must be at most 8"),
        ({"prompt": "x" * 201}, "prompt is 201 characters, over the limit of 200"),
        ({"alternatives": "3"}, "greedy decoding returns one sequence"),
        ({"beams": "2"}, "num_beams applies only to mode='beam'"),
        ({"mode": "beam", "beams": "2", "alternatives": "3"}, "num_return_sequences (3) cannot exceed num_beams (2)"),
        ({"mode": "sample", "top_p": "1.5"}, "top_p must be in (0, 1]"),
        ({"temperature": "0.5"}, "apply only to mode='sample'"),
        ({"prompt": "dog " * 40}, "context"),
    ]
    for data, message in cases:
        response = client.post("/v1/caption", files=_file(PHOTO), data=data)
        assert response.status_code == 422, (data, response.text)
        assert message in response.json()["detail"], (data, response.text)


@pytest.mark.parametrize("endpoint, fields", [("/v1/caption", {}), ("/v1/vqa", {"question": "what is it?"})])
def test_caption_and_vqa_refuse_bad_images(client, endpoint, fields):
    cases = [
        (dict(files=_file(IMAGES_EDGE / "broken.png"), data=fields), 422, "unreadable image"),
        (dict(files=_file(IMAGES_EDGE / "decompression_bomb.gif"), data=fields), 413, "image too large"),
        (dict(content=b"hello", headers={"content-type": "text/plain"}), 415, "unsupported content type"),
        (dict(json={"image_b64": "%%%not base64%%%", **fields}), 422, "not valid base64"),
        (dict(files={"file": ("big.bin", b"\0" * 3_000_001, "image/png")}, data=fields), 413, "over the limit"),
    ]
    for kwargs, status, message in cases:
        response = client.post(endpoint, **kwargs)
        assert response.status_code == status, (kwargs.keys(), response.text)
        assert message in response.json()["detail"], response.text
    assert client.get("/readyz").status_code == 200


# ---------------------------------------------------------------- VQA


def test_open_ended_vqa_is_decoding_after_the_prompt(client, coca):
    response = client.post("/v1/vqa", json={"image_b64": _b64(PHOTO), "question": f"  {QUESTION} "})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"answer", "method", "language", "took_ms"} and body["method"] == "generated"
    assert body["answer"] == _direct_texts(coca, max_new_tokens=10, prefix=f"question: {QUESTION} answer:")[0]


def test_multiple_choice_vqa_ranks_by_decoder_likelihood(client, coca):
    decoder, pixels = coca
    expected = decoder.score_answers(pixels, [f"question: {QUESTION} answer:"], [ANSWERS])[0]
    by_json = client.post("/v1/vqa", json={"image_b64": _b64(PHOTO), "question": QUESTION, "answers": ANSWERS})
    by_form = client.post("/v1/vqa", files=_file(PHOTO), data={"question": QUESTION, "answers": json.dumps(ANSWERS)})
    assert by_json.status_code == 200, by_json.text
    body = by_json.json()
    assert set(body) == {"answer", "scores", "method", "language", "took_ms"} and body["method"] == "likelihood"
    assert list(body["scores"]) == ANSWERS
    assert list(body["scores"].values()) == pytest.approx(expected, abs=1e-4)
    assert body["answer"] == ANSWERS[max(range(len(ANSWERS)), key=expected.__getitem__)]
    assert by_form.json()["scores"] == pytest.approx(body["scores"], abs=1e-6)


def test_vqa_candidate_limit(client):
    answers = [f"answer number {i}" for i in range(200)]
    too_many = client.post("/v1/vqa", json={"image_b64": _b64(PHOTO), "question": QUESTION, "answers": answers})
    assert too_many.status_code == 422
    assert too_many.json()["detail"] == "too many candidate answers: 200, the limit is 100"
    at_limit = client.post("/v1/vqa", json={"image_b64": _b64(PHOTO), "question": QUESTION, "answers": answers[:100]})
    assert at_limit.status_code == 200, at_limit.text
    assert len(at_limit.json()["scores"]) == 100 and at_limit.json()["answer"] in answers[:100]


def test_vqa_refuses_bad_input(client):
    image = _b64(PHOTO)
    cases = [
        ({"question": ""}, "question is empty"),
        ({"question": "   ", "answers": ["yes"]}, "question is empty"),
        ({"question": "x" * 201}, "question is 201 characters, over the limit of 200"),
        ({}, "question"),
        ({"question": QUESTION, "answers": []}, "non-empty list"),
        ({"question": QUESTION, "answers": ["yes", " "]}, "non-empty string"),
        ({"question": QUESTION, "answers": ["yes", "no", "yes "]}, "distinct"),
        ({"question": QUESTION, "answers": ["y" * 201]}, "an answer is 201 characters"),
        ({"question": QUESTION, "answers": "yes"}, "JSON array of strings"),
        ({"question": QUESTION, "answers": [1, 2]}, "answers"),
        ({"question": QUESTION, "max_tokens": 41}, "max_tokens must be between 1 and 40"),
        ({"question": "why " * 40}, "context"),
    ]
    for fields, message in cases:
        response = client.post("/v1/vqa", json={"image_b64": image, **fields})
        assert response.status_code == 422, (fields, response.text)
        assert message in response.json()["detail"], (fields, response.text)
    form = client.post("/v1/vqa", files=_file(PHOTO), data={"question": QUESTION, "answers": "red, blue"})
    assert form.status_code == 422 and "JSON array" in form.json()["detail"]


def test_openapi_documents_both_request_bodies(client):
    spec = client.get("/openapi.json").json()
    for path, field in (("/v1/caption", "mode"), ("/v1/vqa", "question")):
        operation = spec["paths"][path]["post"]
        content = operation["requestBody"]["content"]
        assert field in content["multipart/form-data"]["schema"]["properties"]
        assert field in content["application/json"]["schema"]["properties"]
        assert "image_b64" in content["application/json"]["schema"]["required"]
        assert {"200", "413", "415", "422", "501"} <= set(operation["responses"])


# ---------------------------------------------------------------- a plain CLIP index


@pytest.fixture(scope="module")
def clip_photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip-photos")
    for i in range(3):
        Image.new("RGB", (48, 48), (80 * i, 20, 200)).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def clip_server(clip_photos, tiny_clip_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("clip-index")
    built = run_xmodal(
        "index", clip_photos, "--out", out, "--model", f"local-dir:{tiny_clip_dir}", "--workers", "0", "--no-progress"
    )
    assert built.returncode == 0, built.stderr
    with Server(out, tmp_path_factory.mktemp("clip-logs") / "server.log") as running:
        running.wait_ready()
        yield running


def test_clip_index_cannot_caption_but_answers_multiple_choice_contrastively(clip_server, clip_photos, tiny_clip_dir):
    photo = clip_photos / "1.png"
    caption = httpx.post(clip_server.url + "/v1/caption", files=_file(photo))
    assert caption.status_code == 501 and "text decoder" in caption.json()["detail"]
    open_ended = httpx.post(clip_server.url + "/v1/vqa", files=_file(photo), data={"question": "what colour?"})
    assert open_ended.status_code == 501 and "candidate answers" in open_ended.json()["detail"]

    answers = ["blue", "red", "a green field"]
    response = httpx.post(
        clip_server.url + "/v1/vqa", json={"image_b64": _b64(photo), "question": "what colour?", "answers": answers}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tiny_clip_dir}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tiny_clip_dir}")
    model.eval()
    with torch.no_grad():
        image_emb = model.encode_image(preprocess(Image.open(photo).convert("RGB"))[None], normalize=True)[0]
        text_emb = model.encode_text(tokenizer([f"what colour? {a}" for a in answers]), normalize=True)
    cosine = (text_emb @ image_emb).tolist()
    assert body["method"] == "contrastive"
    assert list(body["scores"].values()) == pytest.approx(cosine, abs=1e-4)
    assert body["answer"] == answers[max(range(3), key=cosine.__getitem__)]


# ---------------------------------------------------------------- command line


def test_decoder_re_ranking_needs_a_decoder(clip_server):
    search = {"text": "a blue square", "k": 2}
    assert httpx.post(clip_server.url + "/v1/search/text", json=search).status_code == 200
    refused = httpx.post(clip_server.url + "/v1/search/text", json={**search, "decoder_rerank": 2})
    assert refused.status_code == 501 and "text decoder" in refused.json()["detail"]


def test_cli_caption_prints_one_line_per_image_and_fails_on_bad_ones(tiny_coca_dir, coca):
    second = COCO_MINI / "images" / "000000000790.jpg"
    result = run_xmodal(
        "caption",
        PHOTO,
        IMAGES_EDGE / "broken.png",
        COCO_MINI / "absent.jpg",
        second,
        "--model",
        f"local-dir:{tiny_coca_dir}",
        "--device",
        "cpu",
    )
    assert result.returncode == 1
    assert "broken.png" in result.stderr and "not a recognised image format" in result.stderr
    assert "absent.jpg: no such file" in result.stderr
    lines = result.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(PHOTO), str(second)]
    assert lines[0].split("\t")[1] == _direct_texts(coca)[0]


def test_cli_ask_ranks_candidates_and_refuses_open_questions_without_a_decoder(tiny_coca_dir, tiny_clip_dir, coca):
    decoder, pixels = coca
    result = run_xmodal("ask", PHOTO, QUESTION, "--answers", ",".join(ANSWERS), "--model", f"local-dir:{tiny_coca_dir}")
    assert result.returncode == 0, result.stderr
    expected = decoder.score_answers(pixels, [f"question: {QUESTION} answer:"], [ANSWERS])[0]
    lines = result.stdout.splitlines()
    ranked = sorted(zip(ANSWERS, expected), key=lambda item: -item[1])
    assert lines[0] == ranked[0][0]
    assert [line.split("\t")[0] for line in lines[1:]] == [answer for answer, _ in ranked]
    assert [float(line.split("\t")[1]) for line in lines[1:]] == pytest.approx([s for _, s in ranked], abs=1e-4)

    refused = run_xmodal("ask", PHOTO, QUESTION, "--model", f"local-dir:{tiny_clip_dir}")
    assert refused.returncode == 2 and "text decoder" in refused.stderr


# ---------------------------------------------------------------- index --caption (needs indexer wiring)


def test_index_caption_stores_a_generated_caption_per_image(tiny_coca_dir, clip_photos, tmp_path):
    from xmodal.indexer.build import BuildConfig

    if "caption" not in {f.name for f in dataclasses.fields(BuildConfig)}:
        pytest.skip("indexer.build.BuildConfig has no `caption` field yet (xmodal index --caption not wired)")
    from xmodal.indexer import store
    from xmodal.models.generation import generate_captions

    built = run_xmodal(
        "index",
        clip_photos,
        "--out",
        tmp_path / "index",
        "--model",
        f"local-dir:{tiny_coca_dir}",
        "--caption",
        "--workers",
        "0",
        "--no-progress",
    )
    assert built.returncode == 0, built.stderr
    version = store.resolve_version(tmp_path / "index")
    items = store.read_table(version, "items").to_pylist()
    loaded = load_model(f"local-dir:{tiny_coca_dir}", "cpu", threads=1)
    for item in items:
        pixels = loaded.preprocess(load_image((clip_photos / item["path"]).read_bytes()))[None]
        assert item["captions"] == generate_captions(loaded, pixels)
    texts = store.read_table(version, "texts").to_pylist()
    assert sorted(t["text"] for t in texts) == sorted(c for item in items for c in item["captions"])
