"""Re-ranking search results with the decoder: does this image show what was asked for?

One embedding per image loses which attribute belongs to which object; a CoCa decoder reads every image
token, so it can check. Each of the embedding's best results is asked the language's presence question
("is there {query}?" in the VQA prompt), a part of the query at a time ("a red circle and a star": two
questions, as TIFA and Davidsonian scene graphs split a description), and the results are re-sorted by the
log-probability that every part is there plus a weighted cosine: VQAScore (Lin et al., 2024) as a second
stage, summed with the contrastive score as BLIP-2 sums its matching and contrastive ones. The world teaches
these questions (models/world/language.py); measurements in docs/decisions/training-recipes.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from xmodal.models.languages import LanguagePrompts
from xmodal.models.prompts import vqa_prompt

if TYPE_CHECKING:  # imported by command-line code for RERANK_DEPTH alone, so without torch
    from torch import Tensor

    from xmodal.models.decoding import CocaDecoder

# How many results the demo's server and the world evaluation re-score: the embedding's best 32 hold a
# hit for 99% of the world's attribute queries.
RERANK_DEPTH = 32
# The embedding's weight in the re-ranked order (match + COSINE_WEIGHT x cosine). On the world's held-out
# scenes, P@1 after re-ranking the best 32 was 0.938 / 0.947 / 0.949 / 0.929 with weights 0 / 1 / 5 / 20
# (docs/decisions/training-recipes.md).
COSINE_WEIGHT = 5.0


def presence_prompt(prompts: LanguagePrompts, query: str) -> str:
    """The decoder prompt that asks whether an image shows `query`: "question: is there {query}? answer:"."""
    return vqa_prompt(prompts.presence_question.format(query=query.strip()), prompts.vqa_prompt)


def rerank_order(matches: Sequence[float], cosines: Sequence[float]) -> list[int]:
    """Positions of the candidates, best first: by match + COSINE_WEIGHT x cosine, ties in the given order."""
    keys = [match + COSINE_WEIGHT * cosine for match, cosine in zip(matches, cosines, strict=True)]
    return sorted(range(len(keys)), key=lambda i: -keys[i])


def query_parts(prompts: LanguagePrompts, query: str) -> list[str]:
    """The parts of a query asked one at a time: "a red circle and a small star" -> ["a red circle", "a small
    star"]. Splitting at the word alone also splits "black and white dog"; a part asks less, never more."""
    return [part.strip() for part in query.split(prompts.conjunction) if part.strip()] or [query.strip()]


def presence_scores(decoder: CocaDecoder, image_tokens: Tensor, prompts: LanguagePrompts, query: str) -> Tensor:
    """(B,) float32, per image (its decoder.image_tokens): the log-probability that every part of the query is
    there, each part's probability read as sigmoid(mean log-probability of yes - that of no); near 0 when the
    decoder says yes to every part."""
    import torch

    parts = []
    for part in query_parts(prompts, query):
        scores = decoder.score_prompt_answers(image_tokens, presence_prompt(prompts, part), prompts.presence_answers)
        parts.append(torch.nn.functional.logsigmoid((scores[:, 0] - scores[:, 1]).float()))
    return torch.stack(parts).sum(dim=0).cpu()
