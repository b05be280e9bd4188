"""POST /v1/rank: zero-shot ranking of given candidates, an image against texts or a text against items."""

from __future__ import annotations

import time

import numpy as np
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from xmodal.app.bodies import elapsed_ms, json_list_fields, parse_fields
from xmodal.app.deps import IndexQuery, ReadyDep, SettingsDep, check_text, pick_index
from xmodal.app.runtime import Runtime
from xmodal.app.schemas import RankHit, RankImageFields, RankResponse, RankTextRequest, error_responses
from xmodal.app.served import ServedIndex
from xmodal.app.settings import Settings
from xmodal.app.uploads import ImageInput, image_from_payload, read_image_input, read_json_payload
from xmodal.app.vectors import stored_rows
from xmodal.models.errors import InvalidInput

router = APIRouter(prefix="/v1/rank", tags=["rank"])
ERRORS = error_responses(400, 404, 413, 415, 422, 429, 503)

_IMAGE_B64 = {"type": "string", "description": "base64 of the image file"}
_TEXTS = RankImageFields.model_json_schema()["properties"]["texts"]
_INDEX = RankImageFields.model_json_schema()["properties"]["index"]
_TEXT_QUERY = RankTextRequest.model_json_schema()
OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "texts"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "texts": {
                            "type": "string",
                            "description": 'Candidate texts as a JSON array string, e.g. ["a dog", "a cat"]',
                        },
                        "index": _INDEX,
                    },
                }
            },
            "application/json": {
                "schema": {
                    "oneOf": [
                        {
                            "title": "RankImageRequest",
                            "type": "object",
                            "required": ["image_b64", "texts"],
                            "properties": {"image_b64": _IMAGE_B64, "texts": _TEXTS, "index": _INDEX},
                        },
                        {k: v for k, v in _TEXT_QUERY.items() if k != "description"},
                    ]
                }
            },
        },
    }
}


@router.post(
    "",
    response_model=RankResponse,
    response_model_exclude_none=True,
    responses=ERRORS,
    openapi_extra=OPENAPI,
    summary="Zero-shot ranking: an image against given texts, or a text against given item ids",
)
async def rank(
    request: Request, runtime: ReadyDep, settings: SettingsDep, index_name: IndexQuery = None
) -> RankResponse:
    started = time.perf_counter()
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        payload = await read_json_payload(request, settings)
        if (
            isinstance(payload, dict)
            and "text" in payload
            and "image_b64" not in payload
            and "image_url" not in payload
        ):
            body = parse_fields(RankTextRequest, payload)
            return await _rank_items(body, pick_index(runtime, body.index, index_name), settings, started)
        if not isinstance(payload, dict):
            raise InvalidInput("JSON body must be an object: {image_b64, texts} or {text, images}")
        upload = await image_from_payload(payload, settings)
    else:
        upload = await read_image_input(request, settings)  # multipart, or a 415 for anything else
    return await _rank_texts(upload, runtime, settings, started, index_name)


async def _rank_texts(
    upload: ImageInput, runtime: Runtime, settings: Settings, started: float, index_name: str | None
) -> RankResponse:
    parsed = parse_fields(RankImageFields, json_list_fields(upload.fields, "texts"))
    model = pick_index(runtime, parsed.index, index_name).model
    texts = parsed.texts
    _check_count(len(texts), "texts", settings)
    texts = [check_text(text, settings, "a candidate text") for text in texts]
    pixels = await run_in_threadpool(model.encoder.preprocess_image, upload.image)
    image_emb = (await model.embed_images([pixels]))[0]
    text_emb = await model.embed_texts(texts)
    scores = text_emb @ image_emb
    order = np.argsort(-scores, kind="stable")
    results = [RankHit(position=int(i), score=float(scores[i]), text=texts[i]) for i in order]
    return RankResponse(results=results, took_ms=elapsed_ms(started))


async def _rank_items(body: RankTextRequest, served: ServedIndex, settings: Settings, started: float) -> RankResponse:
    text = check_text(body.text, settings)
    _check_count(len(body.images), "images", settings)
    index = served.index  # one version for the whole request
    count = index.manifest.images.count
    unknown = [item_id for item_id in body.images if not 0 <= item_id < count]
    if unknown:
        raise InvalidInput(f"unknown item ids: {unknown[:10]} (this index has ids 0..{count - 1})")
    vectors = await run_in_threadpool(stored_rows(index, "images").take, np.asarray(body.images))
    query_emb = (await served.model.embed_texts([text]))[0]
    scores = vectors @ query_emb
    order = np.argsort(-scores, kind="stable")
    paths = index.items.column("path")
    results = [
        RankHit(position=int(i), score=float(scores[i]), id=body.images[i], path=paths[body.images[i]].as_py())
        for i in order
    ]
    return RankResponse(results=results, took_ms=elapsed_ms(started))


def _check_count(count: int, what: str, settings: Settings) -> None:
    if not 1 <= count <= settings.max_rank_candidates:
        raise InvalidInput(f"give 1 to {settings.max_rank_candidates} {what}, got {count}")
