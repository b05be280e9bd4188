"""Text search re-ranked by the decoder: the embedding's first results, checked image by image.

A search with `decoder_rerank: N` takes the embedding's best N results, reads each one's indexed image (only
while it is still the file that was indexed, as /v1/items/{id}/image serves it), and asks the model's decoder
whether it shows the query (models/rerank.py). Those N are sorted by that `match` plus the embedding's
cosine, weighted (models.rerank.rerank_order); the rest follow in embedding order. A candidate whose image
cannot be read now (indexed from a URL, moved, changed, no longer decodable) is not checked: it follows the
checked ones, its match null, and the reason is logged.
"""

from __future__ import annotations

import logging

import torch
from starlette.concurrency import run_in_threadpool

from xmodal.app.item_files import ItemFileError, ItemFiles
from xmodal.app.served import ServedModel
from xmodal.indexer.reader import OpenIndex
from xmodal.models.images import ImageError, load_image
from xmodal.models.rerank import rerank_order

log = logging.getLogger(__name__)
RERANK_BATCH = 32  # images per decoder call, so a large N does not hold every image's tokens at once

Hit = tuple[int, float]  # (item id, cosine)
CheckedHit = tuple[int, float, float | None]  # and the decoder's match, None when not checked


async def rerank(
    hits: list[Hit],
    count: int,
    text: str,
    language: str | None,
    model: ServedModel,
    index: OpenIndex,
    files: ItemFiles,
    max_pixels: int,
) -> list[CheckedHit]:
    """`hits` (best first) with the first `count` re-sorted by the decoder's match for `text` (rerank_order)."""
    head, tail = hits[:count], hits[count:]
    pixels = await run_in_threadpool(_read_images, [item_id for item_id, _ in head], index, files, model, max_pixels)
    readable = [(hit, image) for hit, image in zip(head, pixels) if image is not None]
    matches: list[float] = []
    for start in range(0, len(readable), RERANK_BATCH):
        batch = torch.stack([image for _, image in readable[start : start + RERANK_BATCH]])
        matches += await model.run_model(model.captioner.presence_scores, batch, text, language)
    scored = [(item_id, score, match) for ((item_id, score), _), match in zip(readable, matches)]
    checked = [scored[i] for i in rerank_order(matches, [score for _, score, _ in scored])]
    unread = [(item_id, score, None) for (item_id, score), image in zip(head, pixels) if image is None]
    return [*checked, *unread, *((item_id, score, None) for item_id, score in tail)]


def _read_images(
    item_ids: list[int], index: OpenIndex, files: ItemFiles, model: ServedModel, max_pixels: int
) -> list[torch.Tensor | None]:
    images: list[torch.Tensor | None] = []
    for item_id in item_ids:
        try:
            images.append(model.encoder.preprocess_image(load_image(_item_bytes(index, item_id, files), max_pixels)))
        except (ItemFileError, ImageError) as exc:
            log.warning("decoder re-ranking left item %d unchecked: %s", item_id, exc)
            images.append(None)
    return images


def _item_bytes(index: OpenIndex, item_id: int, files: ItemFiles) -> bytes:
    data = files.item_bytes(index, item_id)
    if isinstance(data, str):
        raise ItemFileError(409, f"item {item_id} was indexed from a URL, which a search does not fetch")
    return data
