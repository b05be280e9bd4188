"""POST /v1/caption: an image → a caption, from the index's own model (CoCa models)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from xmodal.app.deps import IndexQuery, ReadyDep, SettingsDep, pick_index
from xmodal.app.errors import ApiError
from xmodal.app.schemas import CaptionAlternative, CaptionRequest, CaptionResponse, ErrorBody, image_request_body
from xmodal.app.settings import Settings
from xmodal.app.uploads import read_image_input
from xmodal.models.decoding import DecodeOptions
from xmodal.models.generation import DecoderUnavailable

router = APIRouter(prefix="/v1/caption", tags=["caption"])
ERRORS = {code: {"model": ErrorBody} for code in (400, 404, 413, 415, 422, 501, 503)}
DEFAULT_BEAMS = 3


@router.post(
    "",
    response_model=CaptionResponse,
    response_model_exclude_none=True,
    responses=ERRORS,
    openapi_extra=image_request_body(CaptionRequest),
    summary="An image → its caption (501 for a model without a caption decoder)",
)
async def caption_image(
    request: Request, runtime: ReadyDep, settings: SettingsDep, index_name: IndexQuery = None
) -> CaptionResponse:
    started = time.perf_counter()
    upload = await read_image_input(request, settings)
    fields = parse_fields(CaptionRequest, upload.fields)
    model = pick_index(runtime, fields.index, index_name).model
    try:
        model.captioner.require_decoder("captioning")
    except DecoderUnavailable as exc:
        raise ApiError(501, str(exc)) from exc
    options = decode_options(fields, settings)
    pixels = await run_in_threadpool(model.encoder.preprocess_image, upload.image)
    try:
        candidates = (await model.run_model(model.captioner.caption, pixels[None], options))[0]
    except ValueError as exc:  # e.g. a prompt that leaves no room in the context
        raise ApiError(422, str(exc)) from exc
    alternatives = [CaptionAlternative(text=c.text, score=c.score) for c in candidates] if fields.alternatives else None
    return CaptionResponse(caption=candidates[0].text, alternatives=alternatives, took_ms=elapsed_ms(started))


def decode_options(fields: CaptionRequest, settings: Settings) -> DecodeOptions:
    """The request's decoding options within the server's limits; DecodeOptions' own checks give the 422 text."""
    check_max_tokens(fields.max_tokens, settings)
    if not 0 <= fields.alternatives <= settings.max_alternatives:
        raise ApiError(
            422, f"alternatives must be between 0 and {settings.max_alternatives}, got {fields.alternatives}"
        )
    if fields.beams is not None and fields.beams > settings.max_beams:
        raise ApiError(422, f"beams must be at most {settings.max_beams}, got {fields.beams}")
    if len(fields.prompt) > settings.max_text_chars:
        raise ApiError(422, f"prompt is {len(fields.prompt)} characters, over the limit of {settings.max_text_chars}")
    beams = fields.beams
    if beams is None:
        beams = max(DEFAULT_BEAMS, fields.alternatives) if fields.mode == "beam" else 1
    sampling = {
        name: getattr(fields, name) for name in ("top_k", "top_p", "temperature") if getattr(fields, name) is not None
    }
    try:
        return DecodeOptions(
            mode=fields.mode,
            max_new_tokens=fields.max_tokens,
            num_beams=beams,
            num_return_sequences=max(1, fields.alternatives),
            prefix=fields.prompt,
            seed=fields.seed,
            **sampling,
        )
    except ValueError as exc:
        raise ApiError(422, f"invalid decoding options: {exc}") from exc


def check_max_tokens(max_tokens: int, settings: Settings) -> int:
    if not 1 <= max_tokens <= settings.max_caption_tokens:
        raise ApiError(422, f"max_tokens must be between 1 and {settings.max_caption_tokens}, got {max_tokens}")
    return max_tokens


def parse_fields(model: type[BaseModel], fields: dict) -> BaseModel:
    """A request's non-image fields (multipart strings or JSON values) as `model`, or a readable 422."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        readable = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        raise ApiError(422, f"invalid field: {readable}") from exc


def elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
