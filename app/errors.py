"""Every error leaves as JSON `{"detail": "..."}`, never an HTML page; only typed errors are the client's fault.

An `XmodalError` (models/errors.py) becomes the 4xx/5xx its kind means (STATUS_BY_KIND), plus FastAPI's own
422 for a body that fails its pydantic model. Any other exception is a bug: a 500 whose body carries the
request id (the X-Request-ID header, app/middleware.py) and which is logged once, with its traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from xmodal.app.logs import request_id_var
from xmodal.models.errors import (
    Conflict,
    InvalidInput,
    Malformed,
    NotFound,
    Overloaded,
    TooLarge,
    Unavailable,
    Unsupported,
    XmodalError,
)

log = logging.getLogger(__name__)

# Most specific first: the first kind an error is an instance of gives its status.
STATUS_BY_KIND: tuple[tuple[type[XmodalError], int], ...] = (
    (Malformed, 400),
    (TooLarge, 413),
    (InvalidInput, 422),
    (NotFound, 404),
    (Conflict, 409),
    (Overloaded, 429),
    (Unsupported, 501),
    (Unavailable, 503),
)


class ApiError(XmodalError):
    """A refusal whose HTTP status no kind names (401, 403, 415, ...): it carries the status itself."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


def status_of(exc: XmodalError) -> int:
    if isinstance(exc, ApiError):
        return exc.status
    return next((status for kind, status in STATUS_BY_KIND if isinstance(exc, kind)), 500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_middleware(UnhandledErrorMiddleware)  # added first: innermost, right around the routes

    @app.exception_handler(XmodalError)
    async def typed_error(_: Request, exc: XmodalError) -> JSONResponse:
        status = status_of(exc)
        if status >= 500 and not isinstance(exc, Unavailable | Unsupported | ApiError):
            _log_unhandled(exc)  # an XmodalError of no HTTP kind (e.g. a failed build) is still our fault;
            # an ApiError names its status on purpose (502 and 504 for an upstream image_url)
            return _internal_error()
        headers = exc.headers if isinstance(exc, ApiError) else None
        if isinstance(exc, Unavailable):
            headers = {"Retry-After": str(exc.retry_after_s)}
        detail = exc.detail if isinstance(exc, ApiError) else str(exc)
        if isinstance(exc, Overloaded):
            detail = f"overloaded, retry shortly: {detail}"
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        readable = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in errors)
        return JSONResponse({"detail": readable or "invalid request", "errors": _jsonable(errors)}, status_code=422)


class UnhandledErrorMiddleware:
    """Any exception no handler took: log it once with its traceback, answer 500 with the request id.

    Starlette's own catch-all (ServerErrorMiddleware) re-raises after answering, so the server would log the
    same traceback a second time; this layer answers and stops there.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except StarletteHTTPException:
            raise  # the body limit's 413 (app/middleware.py answers it)
        except Exception as exc:  # noqa: BLE001 - the last stop for bugs: logged here, once
            if started:
                raise  # too late for a clean answer: the server logs it and closes the connection
            _log_unhandled(exc)
            await _internal_error()(scope, receive, send)


def _log_unhandled(exc: BaseException) -> None:
    log.error("unhandled error (request id %s)", request_id_var.get(), exc_info=exc)


def _internal_error() -> JSONResponse:
    request_id = request_id_var.get()
    return JSONResponse(
        {"detail": f"internal error; quote request id {request_id} when reporting it", "request_id": request_id},
        status_code=500,
    )


def _jsonable(errors: Sequence[Any]) -> list[dict]:
    return [
        {
            key: (value if key != "ctx" else {k: str(v) for k, v in value.items()})
            for key, value in e.items()
            if key != "input"
        }
        for e in errors
    ]
