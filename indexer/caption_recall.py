"""Retrieval quality of a built index with captions (Flickr-style: several captions per image).

Uses the embeddings stored in the bundle, so it needs no model and measures exactly what the
server searches (FAISS over these vectors equals brute force over them):
- text → image recall@K: per caption, whether its image is among the first K images;
- image → text recall@K: per image, whether any of its own captions is among the first K texts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from xmodal.indexer import store
from xmodal.models import scores
from xmodal.models.errors import InvalidInput

DEFAULT_KS = (1, 5, 10)
CHUNK = 1024  # queries scored at once, to bound memory on large indexes


class NoCaptionsError(InvalidInput):
    """The index was built without --captions, so there is nothing to match images against."""


def index_recall(path: str | Path, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """{"t2i_r@K": ..., "i2t_r@K": ...} for each K, plus the counts they average over."""
    version = store.resolve_version(path)
    manifest = store.read_manifest(version)
    if manifest.texts is None:
        raise NoCaptionsError(f"{version} has no captions: build the index with --captions to evaluate it")
    image_emb = store.read_vectors(version, manifest.images.embeddings).astype(np.float32)
    text_emb = store.read_vectors(version, manifest.texts.embeddings).astype(np.float32)
    text_image = store.read_table(version, "texts").column("image_id").to_numpy()
    return recall_from_embeddings(image_emb, text_emb, text_image, ks)


def recall_from_embeddings(
    image_emb: np.ndarray, text_emb: np.ndarray, text_image: np.ndarray, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """Recall@K both ways; text i describes image text_image[i]; rows are unit vectors."""
    k_max = max(ks)
    t2i = _ranked(text_emb, image_emb, k_max)
    i2t = _ranked(image_emb, text_emb, k_max)
    own_texts: list[set[int]] = [set() for _ in range(len(image_emb))]
    for text, image in enumerate(text_image):
        own_texts[int(image)].add(text)
    # Images without a caption cannot be found by one: leave them out of image → text.
    with_texts = [i for i, texts in enumerate(own_texts) if texts]
    result: dict[str, float] = {}
    for k in ks:
        result[f"t2i_r@{k}"] = scores.recall_at_k(t2i, [{int(i)} for i in text_image], k)
        result[f"i2t_r@{k}"] = scores.recall_at_k(i2t[with_texts], [own_texts[i] for i in with_texts], k)
    result["images"] = float(len(with_texts))
    result["texts"] = float(len(text_emb))
    return result


def _ranked(queries: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    return (
        np.concatenate([scores.top_k(queries[s : s + CHUNK] @ items.T, k) for s in range(0, len(queries), CHUNK)])
        if len(queries)
        else np.zeros((0, min(k, len(items))), dtype=np.int64)
    )
