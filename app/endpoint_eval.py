"""Caption, VQA and search quality measured through a running server's /v1/caption, /v1/vqa and /v1/search/text.

The same held-out world scenes and metrics as models.training.world_evaluation, but every prediction is an HTTP
answer: images go up as PNG (lossless, so the server decodes the pixels the in-process evaluation
uses) and decoding settings match it (greedy, the same token limits). `xmodal eval --model SPEC
--server URL` runs both and prints them side by side: equal numbers mean the endpoints serve what
the model can do.

Search is measured when the served index holds world scenes under their ids (`xmodal demo` indexes them
so): each query's results are judged by their scenes' graphs. The gallery is the served index, so the
numbers equal the in-process ones when it holds the evaluation's own scenes (`xmodal demo --scenes 1000`
beside `xmodal eval --scenes 1000`).
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache

from xmodal.app.client import XmodalClient
from xmodal.models.training.world_evaluation import (
    ANSWER_TOKENS,
    CANDIDATES,
    CAPTION_TOKENS,
    WorldEvaluation,
    WorldReport,
)
from xmodal.models.world import SceneGraph, World, satisfies


def evaluate_through_server(
    client: XmodalClient,
    evaluation: WorldEvaluation,
    *,
    concurrency: int = 4,
    methods: Sequence[str] = ("generated", "ranked"),
    decoder_rerank: int = 0,
) -> WorldReport:
    """Caption and VQA metrics of the scenes of `evaluation`, each prediction one request to `client`'s
    server; `concurrency` requests in flight (the server batches them). With queries, search metrics too
    (search_through_server)."""
    images = [_png(image) for image in evaluation.images]
    report = WorldReport(metrics={}, counts={})

    def caption(i: int) -> str:
        return client.caption(images[i], max_tokens=CAPTION_TOKENS).caption

    def answer(method: str) -> Callable[[int], str]:
        def ask(n: int) -> str:
            i, qa = evaluation.questions[n]
            if method == "generated":
                return client.vqa(images[i], qa.question, max_tokens=ANSWER_TOKENS).answer
            return client.vqa(images[i], qa.question, list(CANDIDATES[qa.type])).answer

        return ask

    with ThreadPoolExecutor(concurrency) as pool:
        if evaluation.captioned_count:
            evaluation.score_captions(report, list(pool.map(caption, range(evaluation.captioned_count))))
        for method in methods if evaluation.questions else ():
            evaluation.score_answers(report, method, list(pool.map(answer(method), range(len(evaluation.questions)))))
    if evaluation.queries:
        try:
            search_through_server(client, evaluation, report, decoder_rerank=decoder_rerank, concurrency=concurrency)
        except NotWorldIndex as exc:
            report.examples["search"] = [{"not measured": str(exc)}]
    return report


# A world scene's image file, as write_scenes names it: "w{seed}-{index:07d}.png".
WORLD_IMAGE = re.compile(r"w(\d+)-(\d{7})\.png$")


class NotWorldIndex(ValueError):
    """The served index holds other images than the world's scenes, so search results cannot be judged."""


def search_through_server(
    client: XmodalClient, evaluation: WorldEvaluation, report: WorldReport, *, decoder_rerank: int, concurrency: int
) -> None:
    """t2i_p@K of the evaluation's queries over the server's index (embedding order, decoder_rerank=0) and, with
    decoder_rerank, t2i_rerank_p@K: a result is a hit when its scene satisfies the query. NotWorldIndex when a
    result is not a world scene of the evaluation's seed."""
    config = evaluation.config
    world = World(seed=config.seed, heldout_fraction=config.heldout_fraction)

    @cache
    def graph(path: str) -> SceneGraph:
        found = WORLD_IMAGE.search(path)
        if found is None or int(found[1]) != config.seed:
            raise NotWorldIndex(f"the served index holds {path!r}, not a scene of the world with seed {config.seed}")
        return world.scene(int(found[2])).graph

    def precision(rerank: int) -> Callable[[int], list[bool]]:
        def search(n: int) -> list[bool]:
            query = evaluation.queries[n]
            hits = client.search_text(query.text, k=max(config.ks), decoder_rerank=rerank).results
            return [satisfies(graph(hit.path), query) for hit in hits]

        return search

    runs = {"t2i_p": 0, **({"t2i_rerank_p": decoder_rerank} if decoder_rerank else {})}
    with ThreadPoolExecutor(concurrency) as pool:
        for name, rerank in runs.items():
            judged = list(pool.map(precision(rerank), range(len(evaluation.queries))))
            for k in config.ks:
                report.metrics[f"{name}@{k}"] = sum(sum(hits[:k]) / k for hits in judged) / len(judged)
    report.counts["queries"] = len(evaluation.queries)


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
