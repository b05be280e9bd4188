"""Cutting a text batch after its longest text leaves CLIP text embeddings unchanged; int8 text encoding stays close."""

from __future__ import annotations

import copy
import dataclasses

import open_clip
import pytest
import torch
import torch.nn.functional as F

from xmodal.models.encoders import Encoder, can_trim_padding

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


@pytest.mark.parametrize("tower", ["clip-text", "text-transformer", "coca"])
def test_int8_text_encoding_stays_close_to_fp32(tiny_coca_dir, tower):
    spec = f"local-dir:{tiny_coca_dir}" if tower == "coca" else "xmodal-tiny-clip"
    encoder = Encoder.from_spec(spec, "cpu")
    if tower == "text-transformer":
        torch.manual_seed(0)
        model = open_clip.create_model("xmodal-tiny-clip", force_custom_text=True).eval()
        encoder = Encoder(dataclasses.replace(encoder.loaded, model=model))
    int8 = Encoder(encoder.loaded, int8_text=True)
    reference = _full(encoder, TEXTS)
    batched = torch.from_numpy(int8.encode_texts(TEXTS))
    alone = torch.cat([torch.from_numpy(int8.encode_texts([text])) for text in TEXTS])
    for got in (batched, alone):  # activations are quantized per call, so a batch moves its texts a little
        assert (got * reference).sum(dim=1).min() > 0.99
        assert not torch.allclose(got, reference, atol=1e-5)  # the int8 path is really taken


def test_int8_text_encoding_is_refused_where_it_cannot_run():
    encoder = Encoder.from_spec("xmodal-tiny-clip", "cpu")
    with pytest.raises(ValueError, match="fp32 model on the CPU"):
        Encoder(dataclasses.replace(encoder.loaded, model=copy.deepcopy(encoder.model).half()), int8_text=True)
