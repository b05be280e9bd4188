"""Captioning and VQA on the tiny CoCa and CLIP configs (seeded random weights).

Oracles: open_clip's own full forward (answer likelihoods), its own encode_image /
encode_text (contrastive fallback) and CocaDecoder (captions, open-ended answers).
"""

from __future__ import annotations

import pytest
import torch

from xmodal.models.decoding import CocaDecoder, DecodeOptions
from xmodal.models.encoders import Encoder
from xmodal.models.errors import InvalidInput
from xmodal.models.generation import (
    DEFAULT_VQA_PROMPT,
    Captioner,
    DecoderUnavailable,
    check_vqa_prompt,
    clean_answers,
    generate_captions,
)

QUESTION = "what is on the table?"
ANSWERS = ["a cat", "two red apples", "nothing", "a laptop computer", "yes"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny model's ops are too small to split; a second thread only waits on a shared CPU."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def coca() -> Encoder:
    return Encoder.from_spec("xmodal-tiny-coca", "cpu", threads=1)


@pytest.fixture(scope="module")
def clip() -> Encoder:
    return Encoder.from_spec("xmodal-tiny-clip", "cpu", threads=1)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))


def _mean_answer_logprob(encoder: Encoder, image: torch.Tensor, prompt: str, answer: str) -> float:
    """Mean log-probability of the answer's tokens and end-of-text, from one full open_clip forward."""
    tokenizer = encoder.loaded.tokenizer
    context = [tokenizer.sot_token_id, *tokenizer.encode(prompt)]
    continuation = [*tokenizer.encode(answer), tokenizer.eot_token_id]
    ids = torch.tensor([[*context, *continuation]])
    with torch.no_grad():
        logits = encoder.model(image[None], ids, output_labels=False)["logits"][0]
    logprobs = logits.float().log_softmax(-1)[len(context) - 1 : -1]
    return logprobs.gather(1, torch.tensor(continuation)[:, None]).mean().item()


def test_multiple_choice_ranks_by_decoder_likelihood(coca, images):
    captioner = Captioner(coca)
    for image in images:
        result = captioner.answer(image, QUESTION, ANSWERS)
        prompt = DEFAULT_VQA_PROMPT.format(question=QUESTION)
        brute_force = [_mean_answer_logprob(coca, image, prompt, answer) for answer in ANSWERS]
        decoder_scores = captioner.decoder.score_answers(image[None], [prompt], [ANSWERS])[0]
        assert result.method == "likelihood"
        assert list(result.scores) == ANSWERS
        assert list(result.scores.values()) == pytest.approx(brute_force, abs=1e-4)
        assert list(result.scores.values()) == pytest.approx(decoder_scores, abs=1e-6)
        assert result.answer == ANSWERS[max(range(len(ANSWERS)), key=brute_force.__getitem__)]


def test_answers_depend_on_the_image(coca, images):
    captioner = Captioner(coca)
    scores = [captioner.answer(image, QUESTION, ANSWERS).scores for image in images]
    assert scores[0] != pytest.approx(scores[1])


def test_the_prompt_template_is_used(coca, images):
    template = "Q: {question} A:"
    result = Captioner(coca, template).answer(images[0], QUESTION, ANSWERS)
    expected = [_mean_answer_logprob(coca, images[0], f"Q: {QUESTION} A:", a) for a in ANSWERS]
    assert list(result.scores.values()) == pytest.approx(expected, abs=1e-4)


def test_open_ended_answer_is_greedy_decoding_after_the_prompt(coca, images):
    captioner = Captioner(coca)
    result = captioner.answer(images[1], f"  {QUESTION} ", max_new_tokens=6)
    direct = CocaDecoder(coca.model, coca.loaded.tokenizer).generate(
        images[1:2], DecodeOptions(max_new_tokens=6, prefix=f"question: {QUESTION} answer:")
    )
    assert result.method == "generated" and result.scores is None
    assert result.answer == direct[0][0].text and result.answer


def test_clip_falls_back_to_contrastive_cosine(clip, images):
    captioner = Captioner(clip)
    assert not captioner.can_generate
    image = images[2]
    result = captioner.answer(image, QUESTION, ANSWERS)
    with torch.no_grad():
        image_emb = clip.model.encode_image(image[None], normalize=True)[0]
        text_emb = clip.model.encode_text(clip.loaded.tokenizer([f"{QUESTION} {a}" for a in ANSWERS]), normalize=True)
    cosine = (text_emb @ image_emb).tolist()
    assert result.method == "contrastive"
    assert list(result.scores.values()) == pytest.approx(cosine, abs=1e-5)
    assert result.answer == ANSWERS[max(range(len(ANSWERS)), key=cosine.__getitem__)]


def test_clip_cannot_caption_or_answer_open_questions(clip, images):
    captioner = Captioner(clip)
    with pytest.raises(DecoderUnavailable, match="captioning needs a model with a text decoder"):
        captioner.caption(images)
    with pytest.raises(DecoderUnavailable, match="open-ended VQA .* rank candidate answers"):
        captioner.answer(images[0], QUESTION)
    with pytest.raises(DecoderUnavailable, match="has none"):
        generate_captions(clip, images)


def test_generate_captions_equals_the_decoder(coca, images):
    direct = CocaDecoder(coca.model, coca.loaded.tokenizer).generate(images, DecodeOptions())  # until end-of-text
    texts = [per_image[0].text for per_image in direct]
    assert generate_captions(coca, images) == texts
    assert generate_captions(coca.loaded, images) == texts
    assert len(set(texts)) == 3 and all(texts)
    beam = DecodeOptions(mode="beam", num_beams=3, max_new_tokens=8)
    assert generate_captions(coca, images[:1], beam) == [Captioner(coca).caption(images[:1], beam)[0][0].text]


def test_ties_go_to_the_first_candidate(coca, clip, images):
    # The tokenizer lowercases, so "Red" and "red" score exactly the same.
    for encoder in (coca, clip):
        captioner = Captioner(encoder)
        for answers in (["Red", "red"], ["red", "Red"]):
            result = captioner.answer(images[0], "what colour is it?", answers)
            assert result.scores[answers[0]] == result.scores[answers[1]]
            assert result.answer == answers[0]


def test_int8_captioner_tracks_fp32(coca, images):
    int8 = Captioner(coca, int8=True)
    assert int8.decoder.int8 and not Captioner(coca).decoder.int8
    quantized = int8.answer(images[0], QUESTION, ANSWERS).scores
    assert list(quantized.values()) == pytest.approx(
        list(Captioner(coca).answer(images[0], QUESTION, ANSWERS).scores.values()), abs=0.05
    )


@pytest.mark.parametrize(
    "answers, message",
    [
        ([], "non-empty list"),
        ("yes", "non-empty list"),
        (["yes", " "], "non-empty string"),
        (["yes", 3], "non-empty string"),
        (["yes", "no", " yes"], "distinct; repeated: 'yes'"),
    ],
)
def test_bad_candidate_answers_are_refused(answers, message):
    with pytest.raises(ValueError, match=message):
        clean_answers(answers)


def test_bad_input_is_refused(coca, images):
    captioner = Captioner(coca)
    with pytest.raises(InvalidInput, match="question is empty"):
        captioner.answer(images[0], "  ", ANSWERS)
    with pytest.raises(ValueError, match=r"\(3, H, W\)") as wrong_shape:  # our bug, not the caller's
        captioner.answer(images, QUESTION, ANSWERS)
    assert not isinstance(wrong_shape.value, InvalidInput)
    with pytest.raises(InvalidInput, match="context length"):
        captioner.answer(images[0], "why " * 40, ANSWERS)
    with pytest.raises(InvalidInput, match="context length"):
        captioner.answer(images[0], "why " * 40)
    with pytest.raises(InvalidInput, match="context length"):
        captioner.caption(images, DecodeOptions(prefix="why " * 40))


@pytest.mark.parametrize("template", ["question answer:", "{q}: {question}", "{question} {0}", "{question"])
def test_bad_prompt_templates_are_refused(template):
    with pytest.raises(ValueError, match="must contain"):
        check_vqa_prompt(template)
