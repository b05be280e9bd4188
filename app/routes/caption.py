"""POST /v1/caption: an image → a caption, from the index's own model (CoCa models)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from xmodal.app.bodies import elapsed_ms, parse_fields
from xmodal.app.deps import IndexQuery, ReadyDep, SettingsDep, pick_index
from xmodal.app.schemas import CaptionAlternative, CaptionRequest, CaptionResponse, error_responses, image_request_body
from xmodal.app.settings import Settings
from xmodal.app.uploads import read_image_input
from xmodal.models.decoding import DecodeOptions
from xmodal.models.errors import InvalidInput
from xmodal.models.generation import decode_options as checked_decode_options
from xmodal.models.languages import DEFAULT_LANGUAGE

router = APIRouter(prefix="/v1/caption", tags=["caption"])
ERRORS = error_responses(400, 404, 413, 415, 422, 501, 503)
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
    model.captioner.require_decoder("captioning")  # DecoderUnavailable: 501
    language = fields.language or DEFAULT_LANGUAGE
    model.captioner.language_prompts(language)  # UnsupportedLanguage: 422, before the image is decoded
    options = decode_options(fields, settings)
    pixels = await run_in_threadpool(model.encoder.preprocess_image, upload.image)
    candidates = (await model.run_model(model.captioner.caption, pixels[None], options, language))[0]
    alternatives = [CaptionAlternative(text=c.text, score=c.score) for c in candidates] if fields.alternatives else None
    return CaptionResponse(
        caption=candidates[0].text, alternatives=alternatives, language=language, took_ms=elapsed_ms(started)
    )


def decode_options(fields: CaptionRequest, settings: Settings) -> DecodeOptions:
    """The request's decoding options within the server's limits; DecodeOptions' own checks give the 422 text."""
    check_max_tokens(fields.max_tokens, settings)
    if not 0 <= fields.alternatives <= settings.max_alternatives:
        raise InvalidInput(f"alternatives must be between 0 and {settings.max_alternatives}, got {fields.alternatives}")
    if fields.beams is not None and fields.beams > settings.max_beams:
        raise InvalidInput(f"beams must be at most {settings.max_beams}, got {fields.beams}")
    if len(fields.prompt) > settings.max_text_chars:
        raise InvalidInput(f"prompt is {len(fields.prompt)} characters, over the limit of {settings.max_text_chars}")
    beams = fields.beams
    if beams is None:
        beams = max(DEFAULT_BEAMS, fields.alternatives) if fields.mode == "beam" else 1
    sampling = {
        name: getattr(fields, name) for name in ("top_k", "top_p", "temperature") if getattr(fields, name) is not None
    }
    return checked_decode_options(
        mode=fields.mode,
        max_new_tokens=fields.max_tokens,
        num_beams=beams,
        num_return_sequences=max(1, fields.alternatives),
        prefix=fields.prompt,
        seed=fields.seed,
        **sampling,
    )


def check_max_tokens(max_tokens: int | None, settings: Settings) -> int | None:
    """An explicit max_tokens within 1..max_caption_tokens; None (until end-of-text, within the context) passes."""
    if max_tokens is not None and not 1 <= max_tokens <= settings.max_caption_tokens:
        raise InvalidInput(f"max_tokens must be between 1 and {settings.max_caption_tokens}, got {max_tokens}")
    return max_tokens
