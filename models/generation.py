"""Captions and visual question answering from the model that also embeds the images.

A CoCa model (one with a text decoder) captions by decoding, answers an open question by
decoding after a prompt ("question: {question} answer:"), and ranks candidate answers by
the decoder's length-normalised log-likelihood after that prompt. A plain dual encoder
(CLIP) has no decoder: it can only rank candidate answers, contrastively, by the cosine
between the image and each statement f"{question} {answer}"; captioning and open
questions raise DecoderUnavailable.

A model trained in several languages (its folder's languages.json, models/languages.py) captions in
each after that language's prefix and answers after that language's prompt; `language_prompts(language)`
gives them, and refuses (UnsupportedLanguage, a 422) a language the model does not speak.

Images come in preprocessed (the encoder's `preprocess_image`), as for `Encoder.encode_images`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, cast

import numpy as np
from torch import Tensor

from xmodal.models.decoding import Candidate, CocaDecoder, DecodeOptions, TextTokenizer, is_captioner
from xmodal.models.encoders import Encoder
from xmodal.models.errors import InvalidInput, Unsupported
from xmodal.models.languages import DEFAULT_LANGUAGE, LanguagePrompts, UnsupportedLanguage, detect_language
from xmodal.models.loading import LoadedModel
from xmodal.models.prompts import DEFAULT_VQA_PROMPT, vqa_prompt
from xmodal.models.rerank import presence_prompt, presence_scores, query_parts

# A caption has no fixed cap: it runs to end-of-text within the model's context (DecodeOptions' default).
# An open-ended answer keeps a short one: answers are a word or a few (the world's are one word), while a CoCa
# trained only on captions never learnt to end an answer and would fill its whole context with caption text.
# Ten tokens keep real answers whole and such a ramble short and cheap; max_new_tokens=None lifts the cap.
DEFAULT_ANSWER_TOKENS = 10

AnswerMethod = Literal["generated", "likelihood", "contrastive"]


class DecoderUnavailable(Unsupported, RuntimeError):
    """The model has no text decoder, so it cannot write text (captions, open-ended answers)."""


@dataclass(frozen=True)
class VqaAnswer:
    answer: str
    # Every candidate's score, in the order given (None for an open question):
    # mean log-probability per token (likelihood) or cosine similarity (contrastive).
    scores: dict[str, float] | None
    method: AnswerMethod
    language: str = DEFAULT_LANGUAGE  # the prompt's language, the one a generated answer comes in


def check_vqa_prompt(template: str) -> str:
    """A prompt template must hold `{question}` and nothing else in braces."""
    try:
        filled = template.format(question="")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"VQA prompt {template!r} must contain '{{question}}' and no other {{...}} field ({exc})"
        ) from exc
    if filled == template:
        raise ValueError(f"VQA prompt {template!r} must contain '{{question}}'")
    return template


class Captioner:
    """Captions and answers for one encoder's model. Not thread-safe: call it from the model's thread.

    int8=True decodes with int8 weight copies (fp32 models on the CPU; see CocaDecoder).
    """

    def __init__(self, encoder: Encoder, vqa_prompt: str = DEFAULT_VQA_PROMPT, *, int8: bool = False):
        self.encoder = encoder
        self.vqa_prompt = check_vqa_prompt(vqa_prompt)
        loaded = encoder.loaded
        captioner = is_captioner(loaded.model)
        self.decoder = CocaDecoder(loaded.model, _text_tokenizer(loaded), int8=int8) if captioner else None

    @property
    def can_generate(self) -> bool:
        """True when the model can write text: captions and open-ended answers."""
        return self.decoder is not None

    def caption(
        self, pixels: Tensor, options: DecodeOptions = DecodeOptions(), language: str | None = None
    ) -> list[list[Candidate]]:
        """Per image of a (B, 3, H, W) batch, `options.num_return_sequences` captions, best first, in
        `language` (default English): its caption prefix goes before `options.prefix`, and stays out of the text."""
        decoder = self.require_decoder("captioning")
        prefix = self.language_prompts(language).caption_prefix
        if prefix:
            options = replace(options, prefix=prefix + options.prefix)
        _check_room(decoder, options.prefix, [], max(1, options.min_new_tokens))
        return decoder.generate(pixels, options)

    @property
    def languages(self) -> tuple[str, ...]:
        """The languages the model writes: its folder's record, else English alone."""
        recorded = self.encoder.loaded.languages
        return tuple(recorded) if recorded else (DEFAULT_LANGUAGE,)

    def language_prompts(self, language: str | None = None) -> LanguagePrompts:
        """The caption prefix and VQA prompt for `language` (default English). English keeps the server's
        VQA prompt; another language uses the prompt the model was trained with."""
        language = language or DEFAULT_LANGUAGE
        if language not in self.languages:
            raise UnsupportedLanguage(
                f"{self.encoder.spec} writes {', '.join(self.languages)}, not {language!r}; "
                "ask in one of those languages (a model trained on several records them in its languages.json)"
            )
        recorded = (self.encoder.loaded.languages or {}).get(language)
        if language == DEFAULT_LANGUAGE or recorded is None:
            return LanguagePrompts(caption_prefix="", vqa_prompt=self.vqa_prompt)
        return recorded

    def question_language(self, question: str, language: str | None = None) -> str:
        """The language to answer in: the one asked for, else the question's own when the model speaks
        several, else English (a model that records no languages answers as it always did)."""
        if language is not None:
            return language
        return detect_language(question) if len(self.languages) > 1 else DEFAULT_LANGUAGE

    def prompt_for(self, question: str, template: str | None = None) -> str:
        return vqa_prompt(question.strip(), template or self.vqa_prompt)

    def answer(
        self,
        pixels: Tensor,
        question: str,
        answers: Sequence[str] | None = None,
        *,
        max_new_tokens: int | None = DEFAULT_ANSWER_TOKENS,
        language: str | None = None,
    ) -> VqaAnswer:
        """Answer a question about one preprocessed image (3, H, W).

        Without `answers`: greedy decoding after the prompt (needs a decoder), until end-of-text or
        max_new_tokens (None: until end-of-text, within the context). With them: the
        best-scoring candidate (the first one on a tie) and every candidate's score. The prompt is
        that of `language` (see question_language); UnsupportedLanguage when the model does not speak it.
        """
        if not isinstance(pixels, Tensor) or pixels.ndim != 3:
            shape = tuple(pixels.shape) if isinstance(pixels, Tensor) else type(pixels).__name__
            raise ValueError(f"pixels must be one preprocessed (3, H, W) image, got {shape}")
        question = question.strip()
        if not question:
            raise InvalidInput("the question is empty")
        language = self.question_language(question, language)
        template = self.language_prompts(language).vqa_prompt
        if answers is None:
            decoder = self.require_decoder("open-ended VQA")
            options = decode_options(max_new_tokens=max_new_tokens, prefix=self.prompt_for(question, template))
            _check_room(decoder, options.prefix, [], 1)
            return VqaAnswer(decoder.generate(pixels[None], options)[0][0].text, None, "generated", language)
        candidates = clean_answers(answers)
        if self.decoder is not None:
            prompt = self.prompt_for(question, template)
            _check_room(self.decoder, prompt, candidates, 0)
            scores = self.decoder.score_answers(pixels[None], [prompt], [candidates])[0]
            method: AnswerMethod = "likelihood"
        else:
            scores = self.contrastive_scores(pixels, question, candidates)
            method = "contrastive"
        best = max(range(len(candidates)), key=scores.__getitem__)
        return VqaAnswer(candidates[best], dict(zip(candidates, map(float, scores))), method, language)

    def presence_scores(self, pixels: Tensor, query: str, language: str | None = None) -> list[float]:
        """For each image of a preprocessed (B, 3, H, W) batch, how sure the decoder is that it shows `query`
        (models/rerank.py), asked in `language` (default: the query's own, as for questions)."""
        decoder = self.require_decoder("re-ranking")
        prompts = self.language_prompts(self.question_language(query, language))
        for part in query_parts(prompts, query):
            _check_room(decoder, presence_prompt(prompts, part), prompts.presence_answers, 0)
        return presence_scores(decoder, decoder.image_tokens(pixels), prompts, query).tolist()

    def contrastive_scores(self, pixels: Tensor, question: str, answers: Sequence[str]) -> list[float]:
        """Cosine between the image and each statement f"{question} {answer}"."""
        image_emb = self.encoder.encode_images(pixels[None])[0]
        text_emb = self.encoder.encode_texts([f"{question} {answer}" for answer in answers])
        return (text_emb @ image_emb).astype(np.float64).tolist()

    def require_decoder(self, task: str) -> CocaDecoder:
        """The decoder, or DecoderUnavailable naming the task that needs it."""
        if self.decoder is None:
            raise DecoderUnavailable(
                f"{task} needs a model with a text decoder (CoCa); {self.encoder.spec} is a plain dual encoder. "
                "It can still rank candidate answers to a question (multiple-choice VQA)."
            )
        return self.decoder


def clean_answers(answers: Sequence[str]) -> list[str]:
    """Candidate answers stripped; refuses an empty list, empty answers and duplicates."""
    if isinstance(answers, str) or not isinstance(answers, Sequence) or len(answers) == 0:
        raise InvalidInput("candidate answers must be a non-empty list of strings")
    cleaned = []
    for answer in answers:
        if not isinstance(answer, str) or not answer.strip():
            raise InvalidInput(f"every candidate answer must be a non-empty string, got {answer!r}")
        cleaned.append(answer.strip())
    duplicates = sorted({a for a in cleaned if cleaned.count(a) > 1})
    if duplicates:
        raise InvalidInput(f"candidate answers must be distinct; repeated: {', '.join(map(repr, duplicates))}")
    return cleaned


def decode_options(**options: Any) -> DecodeOptions:
    """DecodeOptions from a caller's values; InvalidInput with DecodeOptions' own reason when they do not fit."""
    try:
        return DecodeOptions(**options)
    except (TypeError, ValueError) as exc:  # DecodeOptions checks its fields with ValueError (models/decoding.py)
        raise InvalidInput(f"invalid decoding options: {exc}") from exc


def _check_room(decoder: CocaDecoder, prompt: str, answers: Sequence[str], new_tokens: int) -> None:
    """InvalidInput unless the prompt leaves `new_tokens` of the context free, and the prompt and each answer
    fit it: the decoder's own checks, as the caller's error, before any model work."""
    prompt_tokens = 1 + len(decoder.tokenizer.encode(prompt))  # the start token, then the prompt
    room = decoder.context_length - prompt_tokens
    if room < new_tokens:
        raise InvalidInput(
            f"the prompt takes {prompt_tokens} tokens of the context length {decoder.context_length}, leaving "
            f"{max(room, 0)} for new tokens; shorten it"
        )
    for answer in answers:
        answer_tokens = len(decoder.tokenizer.encode(answer)) + 1  # and the end-of-text after it
        if answer_tokens == 1:
            raise InvalidInput(f"answer {answer!r} has no tokens")
        if prompt_tokens + answer_tokens > decoder.context_length:
            raise InvalidInput(
                f"the question and answer {answer!r} take {prompt_tokens + answer_tokens} tokens, more than the "
                f"context length {decoder.context_length}; shorten them"
            )


def can_caption(model: Encoder | LoadedModel) -> bool:
    """True when the model has a text decoder (CoCa): captions and open-ended answers."""
    loaded = model.loaded if isinstance(model, Encoder) else model
    return is_captioner(loaded.model)


def generate_captions(model: Encoder | LoadedModel, pixels: Tensor, options: DecodeOptions | None = None) -> list[str]:
    """The best caption for each image of a preprocessed (B, 3, H, W) batch (e.g. at index time).

    Raises DecoderUnavailable for a model without a text decoder.
    """
    loaded = model.loaded if isinstance(model, Encoder) else model
    if not can_caption(loaded):
        raise DecoderUnavailable(f"captioning needs a model with a text decoder (CoCa); {loaded.spec} has none")
    options = options or DecodeOptions()  # greedy, until end-of-text
    candidates = CocaDecoder(loaded.model, _text_tokenizer(loaded)).generate(pixels, options)
    return [per_image[0].text for per_image in candidates]


def _text_tokenizer(loaded: LoadedModel) -> TextTokenizer:
    """A CoCa is always an open_clip model here, and open_clip's tokenizer has what decoding needs."""
    return cast(TextTokenizer, loaded.tokenizer)
