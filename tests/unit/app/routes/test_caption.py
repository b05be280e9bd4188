"""/v1/caption: a caption from the index's CoCa, its decoding options, 501 for a model without a decoder."""

from __future__ import annotations

import pytest

from tests.unit.app.routes.conftest import PNG, PNG_B64


def test_an_image_gets_a_caption_and_alternatives(client):
    plain = client.post("/v1/caption", json={"image_b64": PNG_B64, "max_tokens": 5})
    assert plain.status_code == 200, plain.text
    assert set(plain.json()) == {"caption", "language", "took_ms"}
    beams = client.post(
        "/v1/caption", files={"file": ("p.png", PNG)}, data={"mode": "beam", "alternatives": "2", "max_tokens": "5"}
    ).json()
    assert len(beams["alternatives"]) == 2 and beams["caption"] == beams["alternatives"][0]["text"]


def test_max_caption_tokens_bounds_only_an_explicit_max_tokens(client):
    """Left out, max_tokens means "until end-of-text, within the context" (31 tokens here), past the server's
    bound of 20 on what a request may ask for; the tiny random model never ends, so the 20-token caption is cut."""
    default = client.post("/v1/caption", json={"image_b64": PNG_B64})
    assert default.status_code == 200, default.text
    cut = client.post("/v1/caption", json={"image_b64": PNG_B64, "max_tokens": 20}).json()["caption"]
    assert default.json()["caption"].startswith(cut) and len(default.json()["caption"]) > len(cut)


@pytest.mark.parametrize(
    "fields, status, message",
    [
        ({"mode": "fast"}, 422, "mode"),
        ({"max_tokens": 21}, 422, "max_tokens must be between 1 and 20"),
        ({"alternatives": 4, "mode": "beam"}, 422, "alternatives must be between 0 and 3"),
        ({"alternatives": 2}, 422, "greedy decoding returns one sequence"),
        ({"top_p": 1.5, "mode": "sample"}, 422, "top_p must be in (0, 1]"),
        ({"prompt": "dog " * 45}, 422, "context length"),
        ({"mode": "sample", "seed": 10**30}, 422, "seed"),
        ({"mode": "sample", "temperature": 1e-320}, 422, "temperature"),
        ({"mode": "sample", "top_p": 1e-300}, 422, "top_p"),
        ({"index": "clip"}, 501, "text decoder"),
    ],
)
def test_refusals(client, fields, status, message):
    response = client.post("/v1/caption", json={"image_b64": PNG_B64, **fields})
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_language_is_english_unless_the_model_writes_another(client):
    english = client.post("/v1/caption", json={"image_b64": PNG_B64, "language": "en", "max_tokens": 2})
    assert english.status_code == 200 and english.json()["language"] == "en"
    for language in ("zh", "fr"):
        refused = client.post("/v1/caption", json={"image_b64": PNG_B64, "language": language})
        assert refused.status_code == 422 and f"not {language!r}" in refused.json()["detail"]
