from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from xmodal.app.bodies import elapsed_ms, parse_fields
from xmodal.app.deps import IndexQuery, ReadyDep, SettingsDep, check_k, check_text, pick_index
from xmodal.app.reranking import CheckedHit, rerank
from xmodal.app.schemas import (
    ImageHit,
    ImageSearchFields,
    SearchOptions,
    SearchResponse,
    Target,
    TextHit,
    TextSearchRequest,
    VectorSearchRequest,
    error_responses,
    image_request_body,
)
from xmodal.app.served import ServedModel
from xmodal.app.settings import Settings
from xmodal.app.uploads import read_image_input
from xmodal.app.vectors import dedup, stored_rows
from xmodal.indexer.reader import OpenIndex
from xmodal.models.errors import InvalidInput

router = APIRouter(prefix="/v1/search", tags=["search"])
ERRORS = error_responses(400, 404, 413, 415, 422, 429, 503)
ERRORS_WITH_501 = error_responses(400, 404, 413, 415, 422, 429, 501, 503)
Hit = TypeVar("Hit", tuple[int, float], CheckedHit)  # (id, cosine), and the decoder's match when re-ranked
DEDUP_MAX_POOL = 16  # with dedup, at most 16 x (offset + k) candidates are examined


@router.post("/text", response_model=SearchResponse, responses=ERRORS_WITH_501, summary="Text → images")
async def search_text(
    request: Request, body: TextSearchRequest, runtime: ReadyDep, settings: SettingsDep, index_name: IndexQuery = None
) -> SearchResponse:
    started = time.perf_counter()
    text = check_text(body.text, settings)
    served = pick_index(runtime, body.index, index_name)
    index = served.index  # one version for the whole request, even if a hot swap happens meanwhile
    options = _checked(body, settings)
    checked = _decoder_rerank(body, text, served.model, settings)
    query_emb = await served.model.embed_texts([text])
    if not checked:
        return SearchResponse(results=_image_hits(index, query_emb, options), took_ms=elapsed_ms(started))
    hits = _image_candidates(index, query_emb, options, at_least=checked)
    reranked = await rerank(
        hits, checked, text, body.language, served.model, index, request.app.state.item_files, settings.max_pixels
    )
    return SearchResponse(results=_image_results(index, _page(reranked, options)), took_ms=elapsed_ms(started))


@router.post(
    "/image",
    response_model=SearchResponse,
    responses=ERRORS,
    openapi_extra=image_request_body(ImageSearchFields),
    summary="Image → images (target=images) or image → captions (target=texts)",
)
async def search_image(
    request: Request, runtime: ReadyDep, settings: SettingsDep, index_name: IndexQuery = None
) -> SearchResponse:
    started = time.perf_counter()
    upload = await read_image_input(request, settings)
    options, target = _image_query_fields(upload.fields, settings)
    served = pick_index(runtime, options.index, index_name)
    index = served.index
    _check_target(index, target)
    pixels = await run_in_threadpool(served.model.encoder.preprocess_image, upload.image)
    query_emb = await served.model.embed_images([pixels])
    return SearchResponse(results=_hits(index, query_emb, options, target), took_ms=elapsed_ms(started))


@router.post("/vector", response_model=SearchResponse, responses=ERRORS, summary="A raw embedding → images or captions")
async def search_vector(
    body: VectorSearchRequest, runtime: ReadyDep, settings: SettingsDep, index_name: IndexQuery = None
) -> SearchResponse:
    started = time.perf_counter()
    index = pick_index(runtime, body.index, index_name).index
    options, target = _checked(body, settings), Target(body.target)
    _check_target(index, target)
    vector = np.asarray(body.vector, dtype=np.float32)
    dim = index.manifest.model.embed_dim
    norm = float(np.linalg.norm(vector)) if vector.size else 0.0
    if vector.shape != (dim,) or not math.isfinite(norm) or norm == 0:
        raise InvalidInput(f"vector must be {dim} finite numbers, not all zero (got {vector.size})")
    return SearchResponse(results=_hits(index, (vector / norm)[None], options, target), took_ms=elapsed_ms(started))


def _checked(options: SearchOptions, settings: Settings) -> SearchOptions:
    check_k(options.k, settings)
    if not 0 <= options.offset <= settings.max_offset:
        raise InvalidInput(f"offset must be between 0 and {settings.max_offset}, got {options.offset}")
    if options.dedup is not None and not (0 < options.dedup <= 1):
        raise InvalidInput(f"dedup must be a cosine threshold in (0, 1], got {options.dedup}")
    return options


def _decoder_rerank(body: TextSearchRequest, text: str, model: ServedModel, settings: Settings) -> int:
    """How many results the decoder re-scores: the request's decoder_rerank, else the server's default when
    the model has a decoder. A request for it without a decoder is a 501; an unknown language a 422."""
    wanted = body.decoder_rerank
    if wanted is None:
        wanted = settings.decoder_rerank if model.captioner.can_generate else 0
    if not 0 <= wanted <= settings.max_decoder_rerank:
        raise InvalidInput(f"decoder_rerank must be between 0 and {settings.max_decoder_rerank}, got {wanted}")
    if wanted:
        model.captioner.require_decoder("decoder re-ranking")  # DecoderUnavailable: 501
        model.captioner.language_prompts(model.captioner.question_language(text, body.language))
    return wanted


def _image_query_fields(fields: dict, settings: Settings) -> tuple[SearchOptions, Target]:
    # A multipart form may send an optional number as an empty field: the same as leaving it out.
    given = {name: value for name, value in fields.items() if not (name in ("min_score", "dedup") and value == "")}
    parsed = parse_fields(ImageSearchFields, given)
    options = SearchOptions(
        index=parsed.index, k=parsed.k, offset=parsed.offset, min_score=parsed.min_score, dedup=parsed.dedup
    )
    return _checked(options, settings), Target(parsed.target)


def _check_target(index: OpenIndex, target: Target) -> None:
    if target is Target.texts and not index.has_texts:
        raise InvalidInput("this index has no captions to search; build it with `xmodal index --captions FILE`")


def _hits(index: OpenIndex, query_emb: np.ndarray, options: SearchOptions, target: Target):
    return _text_hits(index, query_emb, options) if target is Target.texts else _image_hits(index, query_emb, options)


def _candidates(
    index: OpenIndex, search, options: SearchOptions, target: Target, at_least: int = 0
) -> list[tuple[int, float]]:
    """The best max(offset + k, at_least) hits (search(n) gives the top n), near-duplicates removed when
    options.dedup is set: the pool grows until enough survive, the index runs out or DEDUP_MAX_POOL x as many
    were examined."""
    want = max(options.offset + options.k, at_least)
    if options.dedup is None:
        return search(want)
    pool, most = want * 2, want * DEDUP_MAX_POOL
    while True:
        hits = search(pool)
        vectors = stored_rows(index, target.value).take(np.array([item_id for item_id, _ in hits], dtype=np.int64))
        kept = [hits[position] for position in dedup(vectors, options.dedup)]
        if len(kept) >= want or len(hits) < pool or pool >= most:
            return kept[:want]
        pool = min(pool * 4, most)


def _page(hits: list[Hit], options: SearchOptions) -> list[Hit]:
    hits = hits[options.offset : options.offset + options.k]
    return [hit for hit in hits if options.min_score is None or hit[1] >= options.min_score]


def _image_candidates(index: OpenIndex, query_emb: np.ndarray, options: SearchOptions, at_least: int = 0):
    allowed = None
    if options.filters:
        allowed = index.matching_ids(options.filters)  # FilterError (InvalidInput): 422
    search = lambda n: index.search_images(query_emb, n, allowed)[0]  # noqa: E731
    return _candidates(index, search, options, Target.images, at_least)


def _image_hits(index: OpenIndex, query_emb: np.ndarray, options: SearchOptions) -> list[ImageHit]:
    hits = _page(_image_candidates(index, query_emb, options), options)
    return _image_results(index, [(item_id, score, None) for item_id, score in hits])


def _image_results(index: OpenIndex, hits: Sequence[CheckedHit]) -> list[ImageHit]:
    rows = index.item_rows([item_id for item_id, _, _ in hits])
    return [ImageHit(score=score, match=match, **row) for (_, score, match), row in zip(hits, rows)]


def _text_hits(index: OpenIndex, query_emb: np.ndarray, options: SearchOptions) -> list[TextHit]:
    if options.filters:
        raise InvalidInput("filters apply to image results; target=texts takes none")
    search = lambda n: index.search_texts(query_emb, n)[0]  # noqa: E731
    hits = _page(_candidates(index, search, options, Target.texts), options)
    rows = index.text_rows([text_id for text_id, _ in hits])
    paths = {row["id"]: row["path"] for row in index.item_rows(sorted({r["image_id"] for r in rows}))}
    return [
        TextHit(id=row["id"], score=score, text=row["text"], image_id=row["image_id"], path=paths[row["image_id"]])
        for (_, score), row in zip(hits, rows)
    ]
