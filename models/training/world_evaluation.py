"""Model quality on the generated world's held-out scenes, where every answer is known exactly.

    evaluation = WorldEvaluation(WorldEvalConfig(scenes=1000))
    report = evaluation.evaluate(model)          # any open_clip model; CoCa adds captions and VQA
    report.metrics["t2i_p@1"]

Metrics (all in [0, 1]):
- t2i_p@K: text → image precision@K for partial attribute queries ("a red circle and a large
  shape on the left"): a retrieved scene is a hit when it satisfies every attribute of the query.
- t2i_caption_r@K: a scene's canonical caption as the query; a hit is a scene with exactly
  that content (background and jitter aside).
- i2t_r@K: image → text recall@K over the distinct canonical captions of the held-out scenes.
- caption_exact, caption_f1: greedy captions against the canonical caption.
- t2i_rerank_p@K (CoCa): t2i_p@K after the decoder re-ranks the embedding's best `rerank` scenes by
  whether it answers yes to "is there {query}?" (models/rerank.py), as search with `rerank` does.
- vqa_generated_<type>, vqa_ranked_<type> (and _all): open-ended answers decoded after the
  "question: ... answer:" prompt, and the best of the type's candidate answers by the
  decoder's likelihood (score_answers).

With `languages=("en", "zh")` every metric is also measured on the scenes' Chinese twins and
reported with a suffix (`t2i_p@1_zh`, `caption_exact_zh`, `vqa_generated_all_zh`): the same images and
queries, the texts (queries, captions after the "中文：" prefix, questions and answers) in Chinese.

An instance is also train()'s `evaluate` hook: `train(config, evaluate=WorldEvaluation(...))`.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xmodal.models import scores
from xmodal.models.languages import language_prompts
from xmodal.models.prompts import vqa_prompt
from xmodal.models.rerank import RERANK_DEPTH, presence_scores, rerank_order
from xmodal.models.world import (
    COLOURS,
    POSITIONS,
    QUESTION_TYPES,
    SHAPES,
    SIZES,
    World,
    grammar,
    query_text,
    random_query,
    satisfies,
)

# Candidate answers for ranked VQA, per question type.
CANDIDATES: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "size": SIZES,
    "position": POSITIONS,
    "count": ("0", "1", "2", "3"),
    "presence": ("yes", "no"),
}
CAPTION_TOKENS = 30  # most new tokens of a greedy caption (the world's captions are far shorter)
ANSWER_TOKENS = 4  # most new tokens of an open-ended answer (every answer is one word)


@dataclass(frozen=True, kw_only=True)
class WorldEvalConfig:
    scenes: int = 1000  # held-out scenes: the retrieval gallery and the captioned images
    seed: int = 0  # the world's seed (the one the model was trained on)
    heldout_fraction: float = 0.1
    image_size: int = 64  # rendered size; the model's preprocessing resizes if it differs
    queries: int = 500  # partial attribute queries for t2i_p@K
    ks: tuple[int, ...] = (1, 5)
    captions: int | None = None  # scenes to caption (default: all); 0 skips captioning
    questions_per_type: int = 200  # per question type; 0 skips VQA
    vqa_methods: tuple[str, ...] = ("generated", "ranked")
    batch_size: int = 128
    examples: int = 5  # predictions kept in the report, for reading
    # Languages to measure in; metrics of a language other than English carry its suffix ("_zh").
    languages: tuple[str, ...] = ("en",)
    # A CoCa's query results re-ranked by its decoder (models/rerank.py): the embedding's best `rerank`
    # scenes, re-sorted for t2i_rerank_p@K; 0 skips.
    rerank: int = RERANK_DEPTH


@dataclass
class WorldReport:
    metrics: dict[str, float]
    counts: dict[str, int]  # how many queries / images / questions each metric averages
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)


class WorldEvaluation:
    """Held-out scenes and their ground truth, built once; call it on any number of models."""

    def __init__(
        self, config: WorldEvalConfig = WorldEvalConfig(), tokenizer: Any = None, preprocess: Callable | None = None
    ):
        self.config = config
        self.tokenizer, self.preprocess = tokenizer, preprocess
        world = World(seed=config.seed, heldout_fraction=config.heldout_fraction)
        self.scenes = world.scenes(config.scenes, "heldout")
        self.images = [scene.image(config.image_size) for scene in self.scenes]
        self._pixels: dict[str, torch.Tensor] = {}  # by preprocessing settings

        # Image → text: distinct canonical captions; each scene's one relevant caption.
        self.captions = sorted({scene.caption for scene in self.scenes})
        caption_ids = {text: i for i, text in enumerate(self.captions)}
        self.caption_of_scene = [caption_ids[scene.caption] for scene in self.scenes]
        self.scenes_of_caption: list[set[int]] = [set() for _ in self.captions]
        for i, c in enumerate(self.caption_of_scene):
            self.scenes_of_caption[c].add(i)

        # Text → image: partial attribute queries; those no scene satisfies are dropped.
        rng = random.Random(f"xmodal-eval:{config.seed}")
        self.queries, self.query_hits = [], []
        for _ in range(config.queries):
            query = random_query(rng)
            hits = {i for i, scene in enumerate(self.scenes) if _satisfies(scene.graph, query)}
            if hits:
                self.queries.append(query)
                self.query_hits.append(hits)

        self.questions = _questions_by_type(self.scenes, config.questions_per_type)
        self.twins = {
            language: _Twins(World(seed=config.seed, heldout_fraction=config.heldout_fraction, language=language), self)
            for language in config.languages
            if language != "en"
        }

    def __call__(self, model: nn.Module, step: int = 0) -> dict[str, float]:
        return self.evaluate(model).metrics

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> WorldReport:
        was_training = model.training
        model.eval()
        try:
            return self._evaluate(model)
        finally:
            model.train(was_training)

    def _evaluate(self, model: nn.Module) -> WorldReport:
        import open_clip

        config = self.config
        tokenizer = self.tokenizer or open_clip.tokenizer.SimpleTokenizer(context_length=_context_length(model))
        vocab = getattr(getattr(model, "text", None), "vocab_size", None)
        if vocab is not None and vocab != tokenizer.vocab_size:
            # A model with a learnt tokenizer (its folder's text_tokenizer.json) reads no CLIP token ids.
            raise ValueError(
                f"the model's vocabulary has {vocab} tokens, its tokenizer {tokenizer.vocab_size}: pass the model's "
                "own tokenizer (WorldEvaluation(tokenizer=load_model(folder).tokenizer))"
            )
        pixels = self._preprocessed(model)
        device, dtype = _device_dtype(model)
        image_emb = _encode(
            lambda x: model.encode_image(x.to(device, dtype), normalize=False), pixels, config.batch_size
        )
        report = WorldReport(metrics={}, counts={})

        def encode_texts(texts: Sequence[str]) -> np.ndarray:
            return _encode(
                lambda t: model.encode_text(tokenizer(list(t)).to(device), normalize=False), texts, config.batch_size
            )

        queries = {"en": [q.text for q in self.queries]}
        queries.update({language: [query_text(q, language) for q in self.queries] for language in self.twins})
        rankings = {
            language: self._retrieval(report, image_emb, encode_texts, texts, self.twins.get(language, self))
            for language, texts in queries.items()
        }
        report.counts.update(queries=len(self.queries), images=len(self.scenes), captions=len(self.captions))

        from xmodal.models.decoding import is_captioner

        if not is_captioner(model):
            return report
        from xmodal.models.decoding import CocaDecoder

        decoder = CocaDecoder(model, tokenizer)
        if config.rerank:
            self._reranked(report, decoder, pixels, queries, rankings)
        for language in ("en", *self.twins):
            other = self.twins.get(language)  # None: English
            prefix = language_prompts(language).caption_prefix
            if self.captioned_count:
                captions = self._captions(decoder, pixels[: self.captioned_count], prefix)
                self.score_captions(report, captions, other)
            for method in config.vqa_methods if self.questions else ():
                if method == "generated":
                    predicted = self._generated_answers(decoder, pixels, language)
                elif method == "ranked":
                    predicted = self._ranked_answers(decoder, pixels, language)
                else:
                    raise ValueError(f"unknown VQA method {method!r}: use 'generated' or 'ranked'")
                self.score_answers(report, method, predicted, other)
        return report

    def _retrieval(self, report: WorldReport, image_emb, encode_texts, queries, texts) -> tuple[np.ndarray, np.ndarray]:
        """t2i_p@K of the queries, t2i_caption_r@K and i2t_r@K of `texts`' canonical captions; the queries'
        rankings (the best max(ks + (rerank,)) scenes) and their cosines, for re-ranking."""
        suffix = getattr(texts, "suffix", "")
        query_emb = encode_texts(queries)
        caption_emb = encode_texts(texts.captions)
        k_max = max(self.config.ks)
        similarity = query_emb @ image_emb.T
        t2i = scores.top_k(similarity, max(k_max, self.config.rerank))
        t2i_caption = scores.top_k(caption_emb @ image_emb.T, k_max)
        i2t = scores.top_k(image_emb @ caption_emb.T, k_max)
        for k in self.config.ks:
            report.metrics[f"t2i_p@{k}{suffix}"] = scores.precision_at_k(t2i, self.query_hits, k)
            report.metrics[f"t2i_caption_r@{k}{suffix}"] = scores.recall_at_k(t2i_caption, texts.scenes_of_caption, k)
            report.metrics[f"i2t_r@{k}{suffix}"] = scores.recall_at_k(i2t, [{c} for c in texts.caption_of_scene], k)
        return t2i, np.take_along_axis(similarity, t2i, axis=1)

    def _reranked(self, report: WorldReport, decoder, pixels: torch.Tensor, queries, rankings) -> None:
        """t2i_rerank_p@K: each query's ranking with its first `rerank` scenes re-sorted by the decoder."""
        tokens = torch.cat(
            [
                decoder.image_tokens(pixels[s : s + self.config.batch_size])
                for s in range(0, len(pixels), self.config.batch_size)
            ]
        )
        for language, texts in queries.items():
            prompts, suffix = language_prompts(language), "" if language == "en" else f"_{language}"
            reranked = []
            for text, (ranking, cosines) in zip(texts, zip(*rankings[language])):
                head = ranking[: self.config.rerank]
                matches = presence_scores(decoder, tokens[head], prompts, text).tolist()
                order = rerank_order(matches, cosines[: self.config.rerank].tolist())
                reranked.append([*head[order], *ranking[self.config.rerank :]])
            for k in self.config.ks:
                report.metrics[f"t2i_rerank_p@{k}{suffix}"] = scores.precision_at_k(reranked, self.query_hits, k)

    @property
    def captioned_count(self) -> int:
        """How many of the scenes (the first ones) are captioned."""
        return len(self.scenes) if self.config.captions is None else min(self.config.captions, len(self.scenes))

    def score_captions(self, report: WorldReport, predicted: Sequence[str], twins: _Twins | None = None) -> None:
        """caption_exact and caption_f1 of captions predicted for the first `captioned_count` scenes, by
        any means (in process here, through the HTTP endpoints in app/endpoint_eval.py); with `twins`,
        of captions in their language (metrics suffixed "_zh")."""
        scenes, suffix = (self.scenes, "") if twins is None else (twins.scenes, twins.suffix)
        wanted = [scene.caption for scene in scenes[: len(predicted)]]
        # Token F1 over words: Chinese has no spaces, so its words are its characters.
        split = str.split if twins is None else list
        report.metrics[f"caption_exact{suffix}"] = float(
            np.mean([scores.exact_match(p, w) for p, w in zip(predicted, wanted)])
        )
        report.metrics[f"caption_f1{suffix}"] = float(
            np.mean([_f1(split(p), split(w)) for p, w in zip(predicted, wanted)])
        )
        report.counts["captioned"] = len(predicted)
        report.examples[f"captions{suffix}"] = [
            {"image": self.scenes[i].id, "predicted": predicted[i], "wanted": wanted[i]}
            for i in range(min(self.config.examples, len(predicted)))
        ]

    def score_answers(
        self, report: WorldReport, method: str, predicted: Sequence[str], twins: _Twins | None = None
    ) -> None:
        """vqa_<method>_<type> accuracies of answers predicted for `self.questions` (or their twins), in order."""
        questions, suffix = (self.questions, "") if twins is None else (twins.questions, twins.suffix)
        report.counts["questions"] = len(questions)
        answers = [qa.answer for _, qa in questions]
        types = [qa.type for _, qa in questions]
        for kind, accuracy in scores.accuracy_by_type(list(predicted), answers, types).items():
            report.metrics[f"vqa_{method}_{kind}{suffix}"] = accuracy
        report.examples[f"vqa_{method}{suffix}"] = [
            {"image": self.scenes[i].id, "question": qa.question, "predicted": p, "wanted": qa.answer}
            for (i, qa), p in list(zip(questions, predicted))[: self.config.examples]
        ]

    def _preprocessed(self, model: nn.Module) -> torch.Tensor:
        import open_clip

        key = "given" if self.preprocess else repr(sorted(open_clip.get_model_preprocess_cfg(model).items()))
        if key not in self._pixels:
            preprocess = self.preprocess or _model_preprocess(model)
            self._pixels[key] = torch.stack([preprocess(image) for image in self.images])
        return self._pixels[key]

    def _captions(self, decoder, pixels: torch.Tensor, prefix: str = "") -> list[str]:
        from xmodal.models.decoding import DecodeOptions

        options = DecodeOptions(mode="greedy", max_new_tokens=CAPTION_TOKENS, prefix=prefix)
        texts = []
        for start in range(0, len(pixels), self.config.batch_size):
            texts += [c[0].text for c in decoder.generate(pixels[start : start + self.config.batch_size], options)]
        return texts

    def _questions_in(self, language: str) -> list[tuple[int, Any]]:
        return self.questions if language == "en" else self.twins[language].questions

    def _generated_answers(self, decoder, pixels: torch.Tensor, language: str = "en") -> list[str]:
        from xmodal.models.decoding import DecodeOptions

        questions, template = self._questions_in(language), language_prompts(language).vqa_prompt
        # One prompt per generate call: batch the images that share a question.
        by_question: dict[str, list[int]] = defaultdict(list)
        for n, (_, qa) in enumerate(questions):
            by_question[qa.question].append(n)
        predicted = [""] * len(questions)
        for question, ns in by_question.items():
            prompt = vqa_prompt(question, template)
            options = DecodeOptions(mode="greedy", max_new_tokens=ANSWER_TOKENS, prefix=prompt)
            for start in range(0, len(ns), self.config.batch_size):
                chunk = ns[start : start + self.config.batch_size]
                images = pixels[[questions[n][0] for n in chunk]]
                for n, candidates in zip(chunk, decoder.generate(images, options)):
                    predicted[n] = candidates[0].text
        return predicted

    def _ranked_answers(self, decoder, pixels: torch.Tensor, language: str = "en") -> list[str]:
        questions, template = self._questions_in(language), language_prompts(language).vqa_prompt
        answers = grammar(language).answers
        predicted = []
        for start in range(0, len(questions), self.config.batch_size):
            chunk = questions[start : start + self.config.batch_size]
            images = pixels[[i for i, _ in chunk]]
            prompts = [vqa_prompt(qa.question, template) for _, qa in chunk]
            options = [tuple(answers[a] for a in CANDIDATES[qa.type]) for _, qa in chunk]
            answer_scores = decoder.score_answers(images, prompts, options)
            predicted += [opts[int(np.argmax(s))] for opts, s in zip(options, answer_scores)]
        return predicted


class _Twins:
    """The evaluation's scenes with their text in another language: the same graphs, images, queries and
    question positions, the captions and questions of `world`'s language."""

    def __init__(self, world: World, evaluation: WorldEvaluation):
        self.suffix = f"_{world.language}"
        self.scenes = [world.scene(scene.index) for scene in evaluation.scenes]
        self.captions = sorted({scene.caption for scene in self.scenes})
        ids = {text: i for i, text in enumerate(self.captions)}
        self.caption_of_scene = [ids[scene.caption] for scene in self.scenes]
        self.scenes_of_caption: list[set[int]] = [set() for _ in self.captions]
        for i, c in enumerate(self.caption_of_scene):
            self.scenes_of_caption[c].add(i)
        # The twin of each chosen question: a scene's questions come in the same order in every language.
        self.questions = [
            (i, self.scenes[i].questions[evaluation.scenes[i].questions.index(qa)]) for i, qa in evaluation.questions
        ]


def _f1(predicted: list[str], wanted: list[str]) -> float:
    return scores.token_f1(" ".join(predicted), " ".join(wanted))


def _questions_by_type(scenes, per_type: int) -> list[tuple[int, Any]]:
    """(scene position, QA) pairs: the first `per_type` questions of each type, in scene order."""
    if per_type <= 0:
        return []
    taken: dict[str, int] = defaultdict(int)
    chosen = []
    for i, scene in enumerate(scenes):
        for qa in scene.questions:
            if taken[qa.type] < per_type:
                taken[qa.type] += 1
                chosen.append((i, qa))
        if all(taken[t] >= per_type for t in QUESTION_TYPES):
            break
    return chosen


def _satisfies(graph, query) -> bool:
    # satisfies() tries every assignment of objects; most scenes fail a cheaper test first.
    return all(any(q.matches(o) for o in graph.objects) for q in query.objects) and satisfies(graph, query)


def _encode(fn: Callable, items, batch_size: int) -> np.ndarray:
    parts = [F.normalize(fn(items[s : s + batch_size]).float(), dim=-1).cpu() for s in range(0, len(items), batch_size)]
    return torch.cat(parts).numpy()


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


def _context_length(model: nn.Module) -> int:
    return int(getattr(model, "context_length", None) or model.text.context_length)


def _model_preprocess(model: nn.Module) -> Callable:
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return image_transform_v2(PreprocessCfg(**open_clip.get_model_preprocess_cfg(model)), is_train=False)
