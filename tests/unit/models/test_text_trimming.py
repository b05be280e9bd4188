"""Cutting a text batch after its longest text leaves CLIP text embeddings unchanged."""

from __future__ import annotations

import dataclasses

import open_clip
import pytest
import torch
import torch.nn.functional as F

from models.encoders import Encoder, can_trim_padding

TEXTS = ["a dog", "a red bus parked by the side of a busy street in the middle of the city", "pizza", ""]


def _full(encoder: Encoder, texts) -> torch.Tensor:
    with torch.inference_mode():
        return F.normalize(encoder.model.encode_text(encoder.tokenize(texts)).float(), dim=-1)


@pytest.mark.parametrize("custom_text", [False, True], ids=["clip-text", "text-transformer"])
def test_trimmed_texts_embed_like_the_full_context(custom_text):
    encoder = Encoder.from_spec("xmodal-tiny-clip", "cpu")
    if custom_text:  # the same architecture with open_clip's TextTransformer module (model.text)
        torch.manual_seed(0)
        model = open_clip.create_model("xmodal-tiny-clip", force_custom_text=True).eval()
        encoder = Encoder(dataclasses.replace(encoder.loaded, model=model))
        assert encoder.model.text is not None
    assert can_trim_padding(encoder.model, encoder.loaded.tokenizer)
    trimmed = torch.from_numpy(encoder.encode_texts(TEXTS))
    assert torch.allclose(trimmed, _full(encoder, TEXTS), atol=1e-5)
    for text, row in zip(TEXTS, trimmed):  # alone (a shorter cut) as in a batch
        assert torch.allclose(torch.from_numpy(encoder.encode_texts([text]))[0], row, atol=1e-5)


@pytest.mark.parametrize("correct_cls_mask", [False, True], ids=["legacy-cls-mask", "correct-cls-mask"])
def test_coca_texts_embed_like_the_full_context(tiny_coca_dir, correct_cls_mask):
    # CoCa appends a class token after the padding; the cut keeps it at its full-padding position.
    encoder = Encoder.from_spec(f"local-dir:{tiny_coca_dir}", "cpu")
    encoder.model.text.correct_cls_mask = correct_cls_mask
    assert can_trim_padding(encoder.model, encoder.loaded.tokenizer)
    trimmed = torch.from_numpy(encoder.encode_texts(TEXTS))
    assert torch.allclose(trimmed, _full(encoder, TEXTS), atol=1e-5)
    for text, row in zip(TEXTS, trimmed):
        assert torch.allclose(torch.from_numpy(encoder.encode_texts([text]))[0], row, atol=1e-5)
