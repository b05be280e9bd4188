from __future__ import annotations

import time

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from xmodal.app.bodies import elapsed_ms, parse_fields
from xmodal.app.deps import IndexQuery, ReadyDep, SettingsDep, check_text, pick_index
from xmodal.app.schemas import EmbedResponse, EmbedTextRequest, NoFields, error_responses, image_request_body
from xmodal.app.served import ServedModel
from xmodal.app.uploads import read_image_input
from xmodal.models.errors import InvalidInput

router = APIRouter(prefix="/v1/embed", tags=["embed"])
ERRORS = error_responses(400, 404, 413, 415, 422, 503)


@router.post(
    "/text", response_model=EmbedResponse, responses=ERRORS, summary="Texts → unit vectors (the index's model)"
)
async def embed_text(
    body: EmbedTextRequest, runtime: ReadyDep, settings: SettingsDep, index_name: IndexQuery = None
) -> EmbedResponse:
    started = time.perf_counter()
    texts = [check_text(text, settings) for text in body.all_texts]
    if not 1 <= len(texts) <= settings.max_embed_batch:
        raise InvalidInput(f"give 1 to {settings.max_embed_batch} texts, got {len(texts)}")
    model = pick_index(runtime, body.index, index_name).model
    vectors = await model.embed_texts(texts)
    return _response(model, vectors, started)


@router.post(
    "/image",
    response_model=EmbedResponse,
    responses=ERRORS,
    openapi_extra=image_request_body(NoFields),
    summary="An image → its unit vector (the index's model)",
)
async def embed_image(
    request: Request, runtime: ReadyDep, settings: SettingsDep, index_name: IndexQuery = None
) -> EmbedResponse:
    started = time.perf_counter()
    upload = await read_image_input(request, settings)
    fields = parse_fields(NoFields, upload.fields)
    model = pick_index(runtime, fields.index, index_name).model
    pixels = await run_in_threadpool(model.encoder.preprocess_image, upload.image)
    vectors = await model.embed_images([pixels])
    return _response(model, vectors, started)


def _response(model: ServedModel, vectors, started: float) -> EmbedResponse:
    return EmbedResponse(
        embeddings=vectors.tolist(),
        dim=int(vectors.shape[1]),
        model=model.encoder.spec,
        took_ms=elapsed_ms(started),
    )
