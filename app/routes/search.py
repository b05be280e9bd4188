from __future__ import annotations

import time

import numpy as np
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from app.deps import ReadyDep, SettingsDep, check_k, check_text
from app.errors import ApiError
from app.runtime import Runtime
from app.schemas import (
    ErrorBody, ImageHit, ImageSearchFields, SearchResponse, Target, TextHit, TextSearchRequest, image_request_body,
)
from app.uploads import read_image_input

router = APIRouter(prefix="/v1/search", tags=["search"])
ERRORS = {code: {"model": ErrorBody} for code in (400, 413, 415, 422, 503)}


@router.post("/text", response_model=SearchResponse, responses=ERRORS, summary="Text → images")
async def search_text(body: TextSearchRequest, runtime: ReadyDep, settings: SettingsDep) -> SearchResponse:
    started = time.perf_counter()
    text = check_text(body.text, settings)
    k = check_k(body.k, settings)
    query_emb = await runtime.embed_texts([text])
    return SearchResponse(results=_image_hits(runtime, query_emb, k), took_ms=_ms(started))


@router.post(
    "/image",
    response_model=SearchResponse,
    responses=ERRORS,
    openapi_extra=image_request_body(ImageSearchFields),
    summary="Image → images (target=images) or image → captions (target=texts)",
)
async def search_image(request: Request, runtime: ReadyDep, settings: SettingsDep) -> SearchResponse:
    started = time.perf_counter()
    upload = await read_image_input(request, settings)
    k, target = _image_query_fields(upload.fields, settings)
    if target is Target.texts and not runtime.index.has_texts:
        raise ApiError(422, "this index has no captions to search; build it with `xmodal index --captions FILE`")
    pixels = await run_in_threadpool(runtime.encoder.preprocess_image, upload.image)
    query_emb = await runtime.embed_images([pixels])
    results = _text_hits(runtime, query_emb, k) if target is Target.texts else _image_hits(runtime, query_emb, k)
    return SearchResponse(results=results, took_ms=_ms(started))


def _image_query_fields(fields: dict, settings) -> tuple[int, Target]:
    try:
        k = int(fields.get("k", 10))
        target = Target(fields.get("target", Target.images.value))
    except (TypeError, ValueError) as exc:
        raise ApiError(422, f"invalid field: k must be an integer and target one of images, texts ({exc})") from exc
    return check_k(k, settings), target


def _image_hits(runtime: Runtime, query_emb: np.ndarray, k: int) -> list[ImageHit]:
    hits = runtime.index.search_images(query_emb, k)[0]
    rows = runtime.index.item_rows([item_id for item_id, _ in hits])
    return [ImageHit(score=score, **row) for (_, score), row in zip(hits, rows)]


def _text_hits(runtime: Runtime, query_emb: np.ndarray, k: int) -> list[TextHit]:
    hits = runtime.index.search_texts(query_emb, k)[0]
    rows = runtime.index.text_rows([text_id for text_id, _ in hits])
    paths = {row["id"]: row["path"] for row in runtime.index.item_rows(sorted({r["image_id"] for r in rows}))}
    return [
        TextHit(id=row["id"], score=score, text=row["text"], image_id=row["image_id"], path=paths[row["image_id"]])
        for (_, score), row in zip(hits, rows)
    ]


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
