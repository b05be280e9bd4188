"""CoCa decoding on the tiny config with random weights.

The oracle is open_clip's own CoCa.forward over the full sequence: the cached decoder
must pick the same tokens, and every score must be the log-likelihood that a full
forward pass gives.
"""

from __future__ import annotations

import copy
import dataclasses

import open_clip
import pytest
import torch
from torch import nn

from xmodal.models.decoding import CocaDecoder, DecodeOptions, is_captioner
from xmodal.models.languages import language_prompts
from xmodal.models.registry import register_configs
from xmodal.models.rerank import presence_scores

# "!$" tokenises to [0, 259]; id 0 is open_clip's pad id, which the text tower masks out,
# so this prefix checks that the cache reproduces that (shifted) padding mask.
PREFIXES = ["", "a photo of", "wow !$ look"]
EOT = 49407


def _random_coca(seed: int) -> nn.Module:
    register_configs()
    torch.manual_seed(seed)
    model = open_clip.create_model("xmodal-tiny-coca")
    with torch.no_grad():
        # open_clip leaves this projection uninitialised (torch.empty).
        projection = model.text_decoder.text_projection
        nn.init.normal_(projection, std=projection.shape[0] ** -0.5)
    return model.eval()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny model's ops are too small to split; a second thread only waits on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    register_configs()
    return open_clip.get_tokenizer("xmodal-tiny-coca")


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return _random_coca(seed=0)


@pytest.fixture(scope="module")
def decoder(model, tokenizer) -> CocaDecoder:
    return CocaDecoder(model, tokenizer)


@pytest.fixture(scope="module")
def eot_decoder(tokenizer) -> CocaDecoder:
    """A model whose end-of-text logit is always 30, far above the rest (about N(0, 1))."""
    model = copy.deepcopy(_random_coca(seed=0))
    with torch.no_grad():
        model.text_decoder.ln_final.weight[0] = 0.0  # feature 0 of the final norm is always 1
        model.text_decoder.ln_final.bias[0] = 1.0
        model.text_decoder.text_projection[0] = 0.0
        model.text_decoder.text_projection[0, EOT] = 30.0
    return CocaDecoder(model, tokenizer)


@pytest.fixture(scope="module")
def never_ending_decoder(tokenizer) -> CocaDecoder:
    """A model whose end-of-text logit is always -30: it writes until something else stops it."""
    model = copy.deepcopy(_random_coca(seed=0))
    with torch.no_grad():
        model.text_decoder.ln_final.weight[0] = 0.0
        model.text_decoder.ln_final.bias[0] = 1.0
        model.text_decoder.text_projection[0] = 0.0
        model.text_decoder.text_projection[0, EOT] = -30.0
    return CocaDecoder(model, tokenizer)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _token_ids(candidates) -> list[list[tuple[int, ...]]]:
    return [[c.token_ids for c in per_image] for per_image in candidates]


def _scores(candidates) -> list[float]:
    return [c.score for per_image in candidates for c in per_image]


def _full_forward_logprobs(model, image, context_ids, continuation_ids) -> torch.Tensor:
    """Log-probability of each continuation token after context_ids, from one full open_clip forward."""
    ids = torch.tensor([[*context_ids, *continuation_ids]])
    with torch.no_grad():
        logits = model(image.unsqueeze(0), ids, output_labels=False)["logits"][0]
    logprobs = logits.float().log_softmax(-1)[len(context_ids) - 1 : -1]
    return logprobs.gather(1, torch.tensor(continuation_ids).unsqueeze(1)).squeeze(1)


def _brute_force_score(model, tokenizer, image, prefix, candidate, length_penalty=1.0) -> float:
    context = [tokenizer.sot_token_id, *tokenizer.encode(prefix)]
    continuation = [*candidate.token_ids, *([EOT] if candidate.finished else [])]
    logprobs = _full_forward_logprobs(model, image, context, continuation)
    return logprobs.sum().item() / len(continuation) ** length_penalty


# ---------------------------------------------------------------- cache vs full forward


@pytest.mark.parametrize("prefix", PREFIXES)
def test_cached_greedy_equals_full_forward_reference(decoder, images, prefix):
    options = DecodeOptions(max_new_tokens=12, prefix=prefix)
    cached = decoder.generate(images, options)
    reference = decoder.generate(images, options, use_cache=False)

    assert _token_ids(cached) == _token_ids(reference)
    assert _scores(cached) == pytest.approx(_scores(reference), abs=1e-4)
    assert all(len(per_image[0].token_ids) == 12 for per_image in cached)
    assert len({per_image[0].token_ids for per_image in cached}) == len(images)  # rows did not mix


@pytest.mark.parametrize("prefix", PREFIXES)
def test_cached_beam_equals_full_forward_reference(decoder, images, prefix):
    options = DecodeOptions(mode="beam", num_beams=3, num_return_sequences=3, max_new_tokens=8, prefix=prefix)
    cached = decoder.generate(images, options)
    reference = decoder.generate(images, options, use_cache=False)

    assert _token_ids(cached) == _token_ids(reference)
    assert _scores(cached) == pytest.approx(_scores(reference), abs=1e-4)
    for per_image in cached:
        assert len(per_image) == 3
        assert len({c.token_ids for c in per_image}) == 3
        assert [c.score for c in per_image] == sorted((c.score for c in per_image), reverse=True)


def test_cached_beam_equals_reference_when_beams_end(eot_decoder, images):
    options = DecodeOptions(mode="beam", num_beams=2, num_return_sequences=2, min_new_tokens=2, max_new_tokens=6)
    cached = eot_decoder.generate(images, options)
    assert _token_ids(cached) == _token_ids(eot_decoder.generate(images, options, use_cache=False))
    assert all(c.finished and len(c.token_ids) == 2 for per_image in cached for c in per_image)


# ---------------------------------------------------------------- prefix and scores


@pytest.mark.parametrize(
    "options",
    [
        DecodeOptions(max_new_tokens=6, prefix="a photo of"),
        DecodeOptions(mode="beam", num_beams=3, num_return_sequences=2, max_new_tokens=6, prefix="a photo of"),
        DecodeOptions(mode="sample", num_return_sequences=2, top_k=50, seed=3, max_new_tokens=6, prefix="a photo of"),
    ],
    ids=["greedy", "beam", "sample"],
)
def test_every_mode_continues_the_prefix(decoder, model, tokenizer, images, options):
    """Each candidate's score is its log-likelihood *after the prefix*, and its text excludes the prefix."""
    results = decoder.generate(images, options)
    without_prefix = decoder.generate(images, dataclasses.replace(options, prefix=""))

    assert _token_ids(results) != _token_ids(without_prefix)
    for image, per_image in zip(images, results):
        assert len(per_image) == options.num_return_sequences
        for candidate in per_image:
            expected = _brute_force_score(model, tokenizer, image, options.prefix, candidate)
            assert candidate.score == pytest.approx(expected, abs=1e-4)
            assert candidate.text == " ".join(tokenizer.decode(list(candidate.token_ids)).split())
            assert not candidate.text.startswith("a photo")


def test_length_penalty_divides_by_scored_length(decoder, model, tokenizer, images):
    options = DecodeOptions(mode="beam", num_beams=2, length_penalty=0.0, max_new_tokens=5)
    best = decoder.generate(images[:1], options)[0][0]
    assert best.score == pytest.approx(_brute_force_score(model, tokenizer, images[0], "", best, 0.0), abs=1e-4)


# ---------------------------------------------------------------- lengths


def test_end_of_text_stops_generation(eot_decoder, images):
    for candidates in eot_decoder.generate(images, DecodeOptions(max_new_tokens=10)):
        assert candidates[0].token_ids == ()
        assert candidates[0].finished and candidates[0].text == ""


@pytest.mark.parametrize(
    "options",
    [
        DecodeOptions(min_new_tokens=4, max_new_tokens=10),
        DecodeOptions(mode="beam", num_beams=3, min_new_tokens=4, max_new_tokens=10),
        DecodeOptions(mode="sample", seed=0, min_new_tokens=4, max_new_tokens=10),
    ],
    ids=["greedy", "beam", "sample"],
)
def test_min_new_tokens_holds_back_end_of_text(eot_decoder, images, options):
    for candidates in eot_decoder.generate(images, options):
        assert len(candidates[0].token_ids) == 4
        assert candidates[0].finished


@pytest.mark.parametrize("prefix", ["", "a photo of"])
def test_by_default_a_caption_may_fill_the_context(never_ending_decoder, tokenizer, images, prefix):
    """No fixed cap (it was 20): a text that never ends stops only where the context is full."""
    room = never_ending_decoder.context_length - 1 - len(tokenizer.encode(prefix))
    assert never_ending_decoder.new_token_limit(DecodeOptions(prefix=prefix)) == room > 20
    assert never_ending_decoder.new_token_limit(DecodeOptions(max_new_tokens=5, prefix=prefix)) == 5
    for candidates in never_ending_decoder.generate(images, DecodeOptions(prefix=prefix)):
        assert len(candidates[0].token_ids) == room and not candidates[0].finished


@pytest.mark.parametrize(
    "options",
    [
        DecodeOptions(min_new_tokens=4),
        DecodeOptions(mode="beam", num_beams=3, min_new_tokens=4),
        DecodeOptions(mode="sample", seed=0, min_new_tokens=4),
    ],
    ids=["greedy", "beam", "sample"],
)
def test_by_default_decoding_stops_at_end_of_text(eot_decoder, images, options):
    """Without max_new_tokens the end-of-text token still ends the text, long before the context is full."""
    for candidates in eot_decoder.generate(images, options):
        assert len(candidates[0].token_ids) == 4 < eot_decoder.new_token_limit(options)
        assert candidates[0].finished


def test_the_world_demo_models_captions_fit_its_default(tokenizer):
    """xmodal-small-coca (context 32) learns the world's captions; a three-object one takes 23 tokens, so the
    old 20-token default cut "... and a small red square at the bottom" short. The default now leaves room
    for every caption it trains on, with its end-of-text."""
    from xmodal.models.world import World

    register_configs()
    demo = CocaDecoder(open_clip.create_model("xmodal-small-coca"), tokenizer)
    scenes = World(seed=0).scenes(300)
    three_objects = next(s.caption for s in scenes if len(s.graph.objects) == 3)
    assert len(tokenizer.encode(three_objects)) > 20
    longest = max(len(tokenizer.encode(caption)) for scene in scenes for caption in scene.captions)
    assert longest + 1 <= demo.new_token_limit(DecodeOptions()) == demo.context_length - 1


def test_max_new_tokens_caps_unfinished_output(decoder, images):
    for candidates in decoder.generate(images, DecodeOptions(max_new_tokens=5)):
        assert len(candidates[0].token_ids) == 5
        assert not candidates[0].finished


def test_generation_stops_at_the_context_length(decoder, images):
    prefix = "a " * (decoder.context_length - 4)  # start token + 28 prefix tokens leave 3 of 32
    options = DecodeOptions(max_new_tokens=20, prefix=prefix)
    cached = decoder.generate(images, options)
    assert [len(c[0].token_ids) for c in cached] == [3, 3, 3]
    assert _token_ids(cached) == _token_ids(decoder.generate(images, options, use_cache=False))
    with pytest.raises(ValueError, match="min_new_tokens is 5"):
        decoder.generate(images, DecodeOptions(min_new_tokens=5, max_new_tokens=20, prefix=prefix))


# ---------------------------------------------------------------- sampling


def test_seeded_sampling_is_reproducible(decoder, images):
    options = DecodeOptions(mode="sample", num_return_sequences=4, seed=7, max_new_tokens=8)
    first = _token_ids(decoder.generate(images, options))
    assert first == _token_ids(decoder.generate(images, options))
    assert first != _token_ids(decoder.generate(images, dataclasses.replace(options, seed=8)))
    assert len({ids for per_image in first for ids in per_image}) == 12  # samples differ from each other


@pytest.mark.parametrize("filters", [{"top_k": 1}, {"top_p": 1e-6}, {"top_k": 1, "temperature": 5.0}])
def test_keeping_only_the_best_token_samples_greedily(decoder, images, filters):
    greedy = decoder.generate(images, DecodeOptions(max_new_tokens=8, prefix="a photo of"))
    sampled = decoder.generate(
        images, DecodeOptions(mode="sample", seed=0, max_new_tokens=8, prefix="a photo of", **filters)
    )
    assert _token_ids(sampled) == _token_ids(greedy)


def test_repetition_penalty_avoids_seen_tokens(decoder, tokenizer, images):
    prefix = "a photo of a"
    plain = decoder.generate(images, DecodeOptions(max_new_tokens=12, prefix=prefix))
    penalised = decoder.generate(images, DecodeOptions(max_new_tokens=12, prefix=prefix, repetition_penalty=1e4))

    assert any(len(set(c[0].token_ids)) < 12 for c in plain)  # without it, the random model repeats itself
    prefix_ids = set(tokenizer.encode(prefix))
    for candidates in penalised:
        ids = candidates[0].token_ids
        assert len(set(ids)) == len(ids) == 12
        assert not prefix_ids & set(ids)


# ---------------------------------------------------------------- answer ranking


def test_score_answers_equals_per_candidate_full_forward(decoder, model, tokenizer, images):
    prompts = ["question: what colour is the circle? answer:", "question: how many dogs? answer:"]
    answers = [["red", "dark blue", "a pale green square", "!$ grey"], ["two", "3"]]
    scores = decoder.score_answers(images[:2], prompts, answers)

    for image, prompt, image_answers, image_scores in zip(images, prompts, answers, scores):
        context = [tokenizer.sot_token_id, *tokenizer.encode(prompt)]
        expected = [
            _full_forward_logprobs(model, image, context, [*tokenizer.encode(a), EOT]).mean().item()
            for a in image_answers
        ]
        assert image_scores == pytest.approx(expected, abs=1e-5)
        assert len(set(image_scores)) == len(image_scores)


def test_one_prompt_over_many_images_scores_as_each_image_alone(decoder, images):
    """score_prompt_answers (search re-ranking: one question, a batch of candidate images) in one pass."""
    prompt, answers = "question: is there a red circle on the left? answer:", ["yes", "no", "a pale green square"]
    together = decoder.score_prompt_answers(decoder.image_tokens(images), prompt, answers)
    alone = decoder.score_answers(images, [prompt] * len(images), [answers] * len(images))
    assert together.shape == (len(images), len(answers))
    assert together.tolist() == [pytest.approx(row, abs=1e-5) for row in alone]


def test_presence_scores_ask_each_part_of_a_query(decoder, images):
    """A part's probability is sigmoid(yes - no); a query's match, the log-probability that every part is there."""
    tokens, prompts = decoder.image_tokens(images), language_prompts("en")

    def asked(part: str) -> torch.Tensor:
        prompt = f"question: is there {part}? answer:"
        yes_no = torch.tensor(decoder.score_answers(images, [prompt] * len(images), [["yes", "no"]] * len(images)))
        return torch.nn.functional.logsigmoid(yes_no[:, 0] - yes_no[:, 1])

    one = presence_scores(decoder, tokens, prompts, " a red circle ")
    assert one.tolist() == pytest.approx(asked("a red circle").tolist(), abs=1e-5)
    two = presence_scores(decoder, tokens, prompts, "a red circle and a small star on the left")
    expected = asked("a red circle") + asked("a small star on the left")
    assert two.tolist() == pytest.approx(expected.tolist(), abs=1e-5) and bool((two < 0).all())


def test_score_answers_refuses_bad_input(decoder, images):
    with pytest.raises(ValueError, match="one prompt and one answer list per image"):
        decoder.score_answers(images, ["q?"], [["a"]])
    with pytest.raises(ValueError, match="has no tokens"):
        decoder.score_answers(images[:1], ["q?"], [["yes", " "]])
    with pytest.raises(ValueError, match="non-empty list"):
        decoder.score_answers(images[:1], ["q?"], ["yes"])
    with pytest.raises(ValueError, match="context length"):
        decoder.score_answers(images[:1], ["q " * 30], [["yes"]])


# ---------------------------------------------------------------- API


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "nucleus"}, "mode must be one of"),
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        ({"min_new_tokens": 5, "max_new_tokens": 4}, "min_new_tokens must be between"),
        ({"min_new_tokens": -1}, "min_new_tokens must be >= 0"),
        ({"max_new_tokens": 2.5}, "max_new_tokens must be an int"),
        ({"mode": "beam", "num_beams": 0}, "num_beams must be >= 1"),
        ({"num_beams": 4}, "num_beams applies only to mode='beam'"),
        ({"num_return_sequences": 2}, "greedy decoding returns one sequence"),
        ({"mode": "beam", "num_beams": 2, "num_return_sequences": 3}, "cannot exceed num_beams"),
        ({"mode": "sample", "top_k": -1}, "top_k must be >= 0"),
        ({"mode": "sample", "top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"mode": "sample", "temperature": 0.0}, "temperature must be a positive"),
        ({"top_k": 5}, "apply only to mode='sample'"),
        ({"mode": "beam", "num_beams": 2, "temperature": 0.7}, "apply only to mode='sample'"),
        ({"repetition_penalty": 0.0}, "repetition_penalty must be a positive"),
        ({"length_penalty": float("nan")}, "length_penalty must be finite"),
        ({"prefix": None}, "prefix must be a str"),
    ],
)
def test_invalid_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DecodeOptions(**kwargs)


def test_options_are_frozen():
    with pytest.raises(AttributeError):
        DecodeOptions().max_new_tokens = 3  # type: ignore[misc]


def test_is_captioner_tells_coca_from_clip(model, tokenizer):
    register_configs()
    clip = open_clip.create_model("xmodal-tiny-clip")
    assert is_captioner(model)
    assert not is_captioner(clip)
    with pytest.raises(ValueError, match="not a CoCa model"):
        CocaDecoder(clip, tokenizer)


def test_images_must_be_a_preprocessed_batch(decoder):
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        decoder.generate(torch.zeros(3, 32, 32))
    assert decoder.generate(torch.zeros(0, 3, 32, 32)) == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fp16_cuda_follows_the_model_dtype(tokenizer, images):
    decoder = CocaDecoder(_random_coca(seed=0).to("cuda", torch.float16), tokenizer)
    options = DecodeOptions(max_new_tokens=8, prefix="a photo of")
    cached = decoder.generate(images, options)  # float32 CPU images are moved and cast
    assert _token_ids(cached) == _token_ids(decoder.generate(images, options, use_cache=False))
    assert _scores(cached) == pytest.approx(_scores(decoder.generate(images, options, use_cache=False)), abs=1e-2)
    scores = decoder.score_answers(images[:1], ["question: what is it? answer:"], [["a dog", "a cat"]])
    assert all(torch.isfinite(torch.tensor(scores[0])))
