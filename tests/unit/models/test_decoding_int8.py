"""CocaDecoder(int8=True): int8 weight copies for CPU decoding, within a tolerance of fp32.

The oracle is the fp32 cached forward (itself tested against open_clip's full forward in
test_decoding.py): the int8 one must give nearly the same logits at every position.
"""

from __future__ import annotations

import warnings

import open_clip
import pytest
import torch
from torch import nn

from xmodal.models.decoding import CocaDecoder, DecodeOptions
from xmodal.models.registry import register_configs


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    register_configs()
    torch.manual_seed(3)
    model = open_clip.create_model("xmodal-tiny-coca")
    with torch.no_grad():
        projection = model.text_decoder.text_projection
        nn.init.normal_(projection, std=projection.shape[0] ** -0.5)
    return model.eval()


@pytest.fixture(scope="module")
def decoders(model):
    tokenizer = open_clip.get_tokenizer("xmodal-tiny-coca")
    return CocaDecoder(model, tokenizer), CocaDecoder(model, tokenizer, int8=True)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))


def _all_logits(decoder: CocaDecoder, images: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """Next-token logits at every position of `ids`, for each image, through the cached forward."""
    with torch.inference_mode():
        _, image_embs = decoder.model._encode_image(images)
        state = decoder._cached.new_state(image_embs)
        tokens = torch.tensor([ids] * images.shape[0])
        return decoder._cached.forward(state, tokens, all_positions=True).float()


def test_int8_logits_stay_within_tolerance_of_fp32(decoders, images):
    fp32, int8 = decoders
    ids = [49406, *range(300, 320)]
    reference, quantized = _all_logits(fp32, images, ids), _all_logits(int8, images, ids)
    assert reference.shape == quantized.shape == (2, len(ids), 49408)
    error = (quantized - reference).abs()
    # Measured here: max 0.04 (VNNI) to 0.06 of the largest logit, mean 0.02 to 0.03 of their spread.
    assert error.max() < 0.1 * reference.abs().max()
    assert error.mean() < 0.05 * reference.std()
    assert (quantized.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.8
    assert not torch.equal(quantized, reference)  # the int8 path is really taken


def test_every_int8_product_matches_its_fp32_product(model):
    from xmodal.models.int8 import FLOAT_PRODUCTS, Int8Products

    text, decoder = model.text, model.text_decoder
    int8 = Int8Products(text, decoder)
    x = torch.randn(2, 3, decoder.width, generator=torch.Generator().manual_seed(5))
    width = decoder.width

    def close(quantized: torch.Tensor, reference: torch.Tensor) -> None:
        assert quantized.shape == reference.shape
        assert (quantized - reference).norm() < 0.03 * reference.norm()

    with torch.inference_mode():
        for block in [*text.transformer.resblocks, *decoder.resblocks]:
            close(int8.in_proj(block.attn, x, slice(None)), FLOAT_PRODUCTS.in_proj(block.attn, x, slice(None)))
        for block in decoder.cross_attn:
            close(int8.in_proj(block.attn, x, slice(0, width)), FLOAT_PRODUCTS.in_proj(block.attn, x, slice(0, width)))
            keys = slice(width, 2 * width)  # image keys keep the model's weights
            assert torch.equal(int8.in_proj(block.attn, x, keys), FLOAT_PRODUCTS.in_proj(block.attn, x, keys))
        for block in [*text.transformer.resblocks, *decoder.resblocks, *decoder.cross_attn]:
            close(int8.out_proj(block.attn, x), FLOAT_PRODUCTS.out_proj(block.attn, x))
            close(int8.mlp(block, x), FLOAT_PRODUCTS.mlp(block, x))
        close(int8.vocab(decoder, x), FLOAT_PRODUCTS.vocab(decoder, x))


def test_int8_generation_and_answer_scores_track_fp32(decoders, images):
    fp32, int8 = decoders
    options = DecodeOptions(mode="beam", num_beams=3, max_new_tokens=6, prefix="a photo of")
    candidates = int8.generate(images, options)
    assert [len(per_image) for per_image in candidates] == [1, 1] and all(c[0].token_ids for c in candidates)
    answers = ["a dog", "two red cars", "nothing at all"]
    prompts = ["question: what is it? answer:"] * 2
    quantized = int8.score_answers(images, prompts, [answers] * 2)
    reference = fp32.score_answers(images, prompts, [answers] * 2)
    for per_image, expected in zip(quantized, reference):
        assert per_image == pytest.approx(expected, abs=0.05)


def test_int8_packing_prints_no_deprecation_warning(model):
    tokenizer = open_clip.get_tokenizer("xmodal-tiny-coca")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CocaDecoder(model, tokenizer, int8=True)


def test_int8_needs_an_fp32_model_on_the_cpu(model):
    import copy

    half = copy.deepcopy(model).to(torch.bfloat16)
    with pytest.raises(ValueError, match="fp32 model on the CPU"):
        CocaDecoder(half, open_clip.get_tokenizer("xmodal-tiny-coca"), int8=True)
