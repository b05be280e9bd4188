"""POST /v1/vqa: a question about an image, open-ended (CoCa) or over candidate answers (any model)."""

from __future__ import annotations

import functools
import time

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from xmodal.app.bodies import elapsed_ms, json_list_fields, parse_fields
from xmodal.app.deps import IndexQuery, ReadyDep, SettingsDep, check_text, pick_index
from xmodal.app.routes.caption import check_max_tokens
from xmodal.app.schemas import VqaRequest, VqaResponse, error_responses, image_request_body
from xmodal.app.settings import Settings
from xmodal.app.uploads import read_image_input
from xmodal.models.errors import InvalidInput

router = APIRouter(prefix="/v1/vqa", tags=["vqa"])
ERRORS = error_responses(400, 404, 413, 415, 422, 501, 503)
MULTIPART_ANSWERS = {
    "answers": {"type": "string", "description": 'Candidate answers as a JSON array string, e.g. ["red", "blue"]'}
}


@router.post(
    "",
    response_model=VqaResponse,
    response_model_exclude_none=True,
    responses=ERRORS,
    openapi_extra=image_request_body(VqaRequest, MULTIPART_ANSWERS),
    summary="A question about an image → an answer (with candidate answers: the best one and every score)",
)
async def answer_question(
    request: Request, runtime: ReadyDep, settings: SettingsDep, index_name: IndexQuery = None
) -> VqaResponse:
    started = time.perf_counter()
    upload = await read_image_input(request, settings)
    fields = parse_fields(VqaRequest, json_list_fields(upload.fields, "answers"))
    model = pick_index(runtime, fields.index, index_name).model
    question = check_text(fields.question, settings, "question")
    answers = _check_answers(fields.answers, settings)
    if answers is None:
        check_max_tokens(fields.max_tokens, settings)
    language = model.captioner.question_language(question, fields.language)
    model.captioner.language_prompts(language)  # UnsupportedLanguage: 422, before the image is decoded
    answer = functools.partial(model.captioner.answer, max_new_tokens=fields.max_tokens, language=language)
    if answers is None:
        model.captioner.require_decoder("open-ended VQA")  # DecoderUnavailable: 501
    pixels = await run_in_threadpool(model.encoder.preprocess_image, upload.image)
    # Duplicate answers, a question and answer over the context length, ...: InvalidInput from the model layer.
    result = await model.run_model(answer, pixels, question, answers)
    return VqaResponse(
        answer=result.answer,
        scores=result.scores,
        method=result.method,
        language=result.language,
        took_ms=elapsed_ms(started),
    )


def _check_answers(answers: list[str] | None, settings: Settings) -> list[str] | None:
    if answers is None:
        return None
    if len(answers) > settings.max_answers:
        raise InvalidInput(f"too many candidate answers: {len(answers)}, the limit is {settings.max_answers}")
    for answer in answers:
        if len(answer) > settings.max_text_chars:
            raise InvalidInput(f"an answer is {len(answer)} characters, over the limit of {settings.max_text_chars}")
    return answers
