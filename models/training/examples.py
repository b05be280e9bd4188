"""Training examples: an image, a contrastive text and its decoder targets, ready to batch.

Each draw picks `contrastive_texts` contrastive texts (captions, or on world data possibly
partial attribute queries) and `decoder_targets` decoder texts (captions or question/answer texts). Choices are
seeded by the sample key the batch plan hands out, so an example is the same in every
process and after a resume.

On world data every contrastive text comes with what it asks of a scene (a Query), so the
batch knows exactly which of its images each text describes (`positives`), and hard negatives
come for free: captions of the scene with one attribute changed. On a user's CSV a text
describes every image of the batch that has it among its captions.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from xmodal.models.languages import language_prompts
from xmodal.models.prompts import DEFAULT_VQA_PROMPT, vqa_text
from xmodal.models.training.batches import TWIN
from xmodal.models.training.datasets import CsvSource, ImageTexts, WorldSource
from xmodal.models.training.objective import PAD_ID
from xmodal.models.world import (
    NOWHERE,
    POSITIONS,
    Query,
    SceneGraph,
    grammar,
    near_miss,
    partial_query,
    query_text,
    satisfies,
    scene_query,
    swap_attribute,
)

# What an English question/answer target starts with ("question:"): context for the decoder, never taught.
QUESTION_MARK = DEFAULT_VQA_PROMPT.split("{question}")[0].strip()


# The columns of Batch.where: the world's positions, then "no object" (the background).
PLACES = (*POSITIONS, NOWHERE)


class Example(NamedTuple):
    image: torch.Tensor
    texts: tuple[str, ...]  # contrastive texts
    targets: tuple[str, ...]  # decoder texts
    # Per target, the prefix the decoder is given rather than taught (a question's "question: ...
    # answer:"); "" teaches the whole text.
    prompts: tuple[str, ...]
    queries: tuple[Query, ...] | None  # what each text asks of a scene (world data only)
    graph: SceneGraph | None  # what the image holds (world data only)
    captions: tuple[str, ...]  # every caption of the image (a user's CSV: the texts that describe it)
    # Per target, the text its answer follows when it is a question/answer text ("question: ...
    # answer:"), else "": the tokens after it, up to the end token, are the answer (answer_loss_weight).
    answer_prompts: tuple[str, ...] = ()
    # Per target, where its answer is read from (world.QA.where: positions, or NOWHERE); () for a
    # caption or a user's question.
    where: tuple[tuple[str, ...], ...] = ()


class Batch(NamedTuple):
    images: torch.Tensor  # (B, 3, H, W)
    texts: torch.Tensor  # (B * contrastive_texts, context), image i's texts in consecutive rows
    targets: torch.Tensor  # (B * decoder_targets, context), likewise
    positives: torch.Tensor  # (texts, images) bool: text j describes image i
    complete: torch.Tensor  # (texts,) bool: the text is a whole caption, not a partial query
    taught: torch.Tensor  # like targets, bool: the decoder learns to predict this token (not a prompt's)
    answers: torch.Tensor  # like targets, bool: an answer token of a question/answer target
    # (targets, len(PLACES)) bool: where a question target's answer is read from (world.QA.where)
    where: torch.Tensor | None = None


class ExampleDataset(torch.utils.data.Dataset):
    """Maps a (position, sample key) pair from the batch plan to an Example."""

    def __init__(
        self,
        source: WorldSource | CsvSource,
        preprocess: Callable,
        vqa_fraction: float,
        decoder_targets: int = 1,
        query_fraction: float = 0.0,
        contrastive_texts: int = 1,
        hard_negatives: int = 0,
        answers_only: bool = False,
        swap_negatives: int = 0,
        qa_targets: int = 0,
        presence_weight: float = 1.0,
    ):
        """`answers_only`: a question/answer target teaches only its answer; the question is the
        prompt it is answered from, as at inference (see TrainConfig.vqa_answers_only).
        `swap_negatives`, `qa_targets`, `presence_weight`: see TrainConfig. A sample key ending in TWIN (the batch
        plan's binding twins) loads its scene with one attribute swapped between two objects."""
        self.source = source
        self.answers_only = answers_only
        self.preprocess = preprocess
        self.vqa_fraction = vqa_fraction
        self.decoder_targets = decoder_targets
        self.query_fraction = query_fraction
        self.contrastive_texts = contrastive_texts
        self.hard_negatives = hard_negatives
        self.swap_negatives = swap_negatives
        self.qa_targets = qa_targets
        self.presence_weight = presence_weight

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item: tuple[int, str]) -> Example:
        index, key = item
        rng = random.Random(key)
        if key.endswith(TWIN) and isinstance(self.source, WorldSource):
            image, texts = self.source.twin(index, random.Random(f"{key}:swap"))
        else:
            image, texts = self.source.load(index)
        caption = rng.choice(texts.captions)
        # A leftover draw (its targets are drawn again below); kept so a seed still yields the same examples.
        self._targets(texts, rng)
        captions, queries = [caption], []
        captions += [rng.choice(texts.captions) for _ in range(self.contrastive_texts - 1)]
        if texts.graph is not None:
            for n in range(len(captions)):
                queries.append(scene_query(texts.graph))  # a caption describes the whole scene
                first_of_several = n == 0 and len(captions) > 1
                if self.query_fraction and not first_of_several and rng.random() < self.query_fraction:
                    queries[n] = partial_query(texts.graph, rng)
                    captions[n] = query_text(queries[n], texts.language)
            for _ in range(self.hard_negatives):
                # The caption of a scene one attribute away: it describes no image unless one
                # in the batch happens to hold exactly that content.
                other = near_miss(texts.graph, rng)
                queries.append(scene_query(other))
                captions.append(grammar(texts.language).canonical_caption(other))
            for _ in range(self.swap_negatives):
                # The scene with an attribute swapped between two objects: the same words, bound
                # differently. A scene of one object (or identical ones) has none: a near miss instead.
                other = swap_attribute(texts.graph, rng) or near_miss(texts.graph, rng)
                queries.append(scene_query(other))
                captions.append(grammar(texts.language).canonical_caption(other))
        drawn = self._targets(texts, rng)
        drawn += [self._typed_question(texts, rng) for _ in range(self.qa_targets)]
        targets, prompts, answer_prompts, where = (tuple(column) for column in zip(*drawn))
        return Example(
            self.preprocess(image),
            tuple(captions),
            targets,
            prompts,
            tuple(queries) if queries else None,
            texts.graph,
            texts.captions,
            answer_prompts,
            where,
        )

    def _targets(self, texts: ImageTexts, rng: random.Random) -> list[tuple[str, str, str, tuple[str, ...]]]:
        """(decoder text, its prompt, its answer's prompt, where its answer is) (see _question). A caption in another
        language than English follows its language's prefix ("中文："), given, not taught: the decoder
        learns which language to write."""
        prompts = language_prompts(texts.language)

        def caption() -> tuple[str, str, str, tuple[str, ...]]:
            return prompts.caption_prefix + rng.choice(texts.decoder_captions), prompts.caption_prefix, "", ()

        def question() -> tuple[str, str, str, tuple[str, ...]]:
            i = rng.choice(range(len(texts.questions)))  # the draw rng.choice(texts.questions) makes
            where = texts.question_where[i] if texts.question_where else ()
            return self._question(*texts.questions[i], prompts.vqa_prompt, where)

        if self.decoder_targets == 1:
            return [question() if texts.questions and rng.random() < self.vqa_fraction else caption()]
        # The first is always a caption: while question/answer texts stay under half of all
        # targets, a caption (not "question: ...") is what the decoder writes without a prompt.
        targets = [caption()]
        for _ in range(self.decoder_targets - 1):
            targets.append(question() if texts.questions and rng.random() < self.vqa_fraction else caption())
        return targets

    def _typed_question(self, texts: ImageTexts, rng: random.Random) -> tuple[str, str, str, tuple[str, ...]]:
        """A question/answer target whose type is drawn uniformly from the image's question types (presence
        `presence_weight` times as often), so every type is taught about equally often (the world has 3 to 9
        colour questions per scene but 1 to 2 presence ones); a caption when the image has no questions."""
        prompts = language_prompts(texts.language)
        if not texts.questions:
            return prompts.caption_prefix + rng.choice(texts.decoder_captions), prompts.caption_prefix, "", ()
        types = texts.question_types or ("",) * len(texts.questions)
        where = texts.question_where or ((),) * len(texts.questions)
        kinds = sorted(set(types))
        kind = rng.choices(kinds, [self.presence_weight if k == "presence" else 1.0 for k in kinds])[0]
        (asked, answer), here = rng.choice([(qa, w) for qa, t, w in zip(texts.questions, types, where) if t == kind])
        return self._question(asked, answer, prompts.vqa_prompt, here)

    def _question(
        self, asked: str, answer: str, template: str, where: tuple[str, ...] = ()
    ) -> tuple[str, str, str, tuple[str, ...]]:
        """A question/answer target in `template` (the language's VQA prompt), its prompt and the text its
        answer follows ("question: ... answer:", for answer_loss_weight). The prompt is the text
        up to the answer with answers_only (as models.prompts.vqa_prompt decodes from), else only the
        template's leading word ("question:", "问题："). That word is never taught, so however many
        targets are questions, a caption is what the decoder writes without a prompt: with one question
        per caption and "question" taught, greedy captions began "question: ..." (caption exact 0.00 at
        step 400)."""
        lead = template.split("{question}")[0].strip()
        asking = vqa_text(asked, "", template)
        return vqa_text(asked, answer, template), asking if self.answers_only else lead, asking, where


class Collate:
    """Stacks images, tokenises texts, marks which texts describe which images (a class, so
    DataLoader workers can pickle it)."""

    # World texts repeat (queries, questions and answers, a caption once per epoch), so each is
    # tokenised once. With the caption shortcut below, a world batch of 64 takes 48 ms instead of 58.
    CACHE_SIZE = 200_000

    def __init__(self, tokenizer: Callable[[Sequence[str]], torch.Tensor]):
        self.tokenizer = tokenizer
        self._tokens: dict[str, torch.Tensor] = {}

    def __call__(self, batch: list[Example]) -> Batch:
        images = torch.stack([e.image for e in batch])
        texts = self._tokenize([t for e in batch for t in e.texts])
        targets = self._tokenize([t for e in batch for t in e.targets])
        taught = self._taught(targets, [p for e in batch for p in e.prompts])
        answer_prompts = [p for e in batch for p in (e.answer_prompts or ("",) * len(e.targets))]
        answers = self._taught(targets, answer_prompts, only_prompted=True)
        answers[torch.arange(len(targets)), (targets != PAD_ID).sum(dim=1) - 1] = False  # the end token
        scenes = [(e.queries, e.graph) for e in batch if e.queries is not None and e.graph is not None]
        if len(scenes) == len(batch):
            # Ground truth: a text describes every image that satisfies its query. A caption's query
            # names every attribute of every object, so it holds exactly for scenes with that content.
            contents = [_content(graph.objects) for _, graph in scenes]
            rows = [
                [content == c for c in contents]
                if (content := _exact_content(q)) is not None
                else [_describes(q, graph) for _, graph in scenes]
                for queries, _ in scenes
                for q in queries
            ]
            complete = [q.exact for queries, _ in scenes for q in queries]
        else:
            # A user's captions: a text describes every image that has it as a caption.
            captions = [set(e.captions) | set(e.texts) for e in batch]
            rows = [[t in c for c in captions] for e in batch for t in e.texts]
            complete = [True] * len(rows)
        positives = torch.tensor(rows, dtype=torch.bool)
        where = torch.tensor(
            [[p in places for p in PLACES] for e in batch for places in (e.where or ((),) * len(e.targets))],
            dtype=torch.bool,
        )
        return Batch(images, texts, targets, positives, torch.tensor(complete), taught, answers, where)

    def _taught(self, targets: torch.Tensor, prompts: list[str], only_prompted: bool = False) -> torch.Tensor:
        """Tokens after each target's prompt (the start token is never predicted anyway); with
        `only_prompted`, none of a target whose prompt is "". A prompt tokenises to the same tokens
        as the start of its target: the tokenizer splits words and punctuation before its byte-pair
        merges."""
        prompted = [i for i, p in enumerate(prompts) if p]
        # the start token; with only_prompted, every token of an unprompted target
        given = torch.full((len(prompts),), targets.shape[1] if only_prompted else 1, dtype=torch.long)
        if prompted:
            # The prompt's own tokens count, not its end token.
            given[prompted] = (self._tokenize([prompts[i] for i in prompted]) != PAD_ID).sum(dim=1) - 1
        positions = torch.arange(targets.shape[1])
        return (targets != PAD_ID) & (positions[None, :] >= given[:, None])

    def _tokenize(self, texts: list[str]) -> torch.Tensor:
        new = [t for t in dict.fromkeys(texts) if t not in self._tokens]
        if new:
            if len(self._tokens) + len(new) > self.CACHE_SIZE:
                self._tokens.clear()
            self._tokens.update(zip(new, self.tokenizer(new)))
        return torch.stack([self._tokens[t] for t in texts])


def _content(objects) -> tuple[tuple[str, ...], ...]:
    return tuple(sorted((o.shape, o.colour, o.size, o.position) for o in objects))


def _exact_content(query: Query) -> tuple[tuple[str, ...], ...] | None:
    """The content every scene satisfying `query` has, when the query fixes it (None otherwise)."""
    if not query.exact or any(None in (o.shape, o.colour, o.size, o.position) for o in query.objects):
        return None
    return _content(query.objects)


def _describes(query: Query, graph: SceneGraph) -> bool:
    # A cheap necessary test first: satisfies() tries every assignment of objects to the query.
    return all(any(q.matches(o) for o in graph.objects) for q in query.objects) and satisfies(graph, query)
