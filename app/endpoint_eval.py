"""Caption and VQA quality measured through a running server's /v1/caption and /v1/vqa.

The same held-out world scenes and metrics as models.training.world_evaluation, but every prediction is an HTTP
answer: images go up as PNG (lossless, so the server decodes the pixels the in-process evaluation
uses) and decoding settings match it (greedy, the same token limits). `xmodal eval --model SPEC
--server URL` runs both and prints them side by side: equal numbers mean the endpoints serve what
the model can do.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from xmodal.app.client import XmodalClient
from xmodal.models.training.world_evaluation import (
    ANSWER_TOKENS,
    CANDIDATES,
    CAPTION_TOKENS,
    WorldEvaluation,
    WorldReport,
)


def evaluate_through_server(
    client: XmodalClient,
    evaluation: WorldEvaluation,
    *,
    concurrency: int = 4,
    methods: Sequence[str] = ("generated", "ranked"),
) -> WorldReport:
    """Caption and VQA metrics of the scenes of `evaluation`, each prediction one request to `client`'s
    server; `concurrency` requests in flight (the server batches them)."""
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
    return report


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
