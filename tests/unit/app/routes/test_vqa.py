"""/v1/vqa: open-ended answers (CoCa), ranked candidates (any model), and the typed 4xx/501."""

from __future__ import annotations

import json

import pytest

from tests.unit.app.routes.conftest import PNG, PNG_B64

ANSWERS = ["red", "blue"]


def test_open_and_multiple_choice_answers(client):
    open_ended = client.post("/v1/vqa", json={"image_b64": PNG_B64, "question": "what colour?", "max_tokens": 3})
    assert open_ended.status_code == 200, open_ended.text
    assert open_ended.json()["method"] == "generated"
    by_form = client.post(
        "/v1/vqa", files={"file": ("p.png", PNG)}, data={"question": "what colour?", "answers": json.dumps(ANSWERS)}
    ).json()
    assert by_form["method"] == "likelihood" and list(by_form["scores"]) == ANSWERS
    clip = client.post("/v1/vqa?index=clip", json={"image_b64": PNG_B64, "question": "what?", "answers": ANSWERS})
    assert clip.json()["method"] == "contrastive"


@pytest.mark.parametrize(
    "fields, status, message",
    [
        ({"question": " "}, 422, "question is empty"),
        ({"question": "q", "answers": []}, 422, "non-empty list"),
        ({"question": "q", "answers": ["red", "red "]}, 422, "distinct"),
        ({"question": "q", "answers": ["a"] * 9}, 422, "too many candidate answers"),
        ({"question": "q", "answers": "red, blue"}, 422, "JSON array of strings"),
        ({"question": "q", "answers": "[" * 3000 + "]" * 3000}, 422, "nested too deeply"),
        ({"question": "why " * 45}, 422, "context length"),
        ({"question": "q", "max_tokens": 0}, 422, "max_tokens must be between 1 and 20"),
        ({"question": "q", "index": "clip"}, 501, "text decoder"),
    ],
)
def test_refusals(client, fields, status, message):
    response = client.post("/v1/vqa", json={"image_b64": PNG_B64, **fields})
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_language_an_english_only_model_answers_in_and_refuses(client):
    # A model without languages.json answers a Chinese question as before, in English; asked for zh: a 422.
    chinese = client.post("/v1/vqa", json={"image_b64": PNG_B64, "question": "什么颜色？", "max_tokens": 2})
    assert chinese.status_code == 200 and chinese.json()["language"] == "en"
    asked = client.post("/v1/vqa", json={"image_b64": PNG_B64, "question": "what?", "language": "zh"})
    assert asked.status_code == 422 and "writes en, not 'zh'" in asked.json()["detail"]
