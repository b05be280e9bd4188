"""Reading an image out of a request: multipart `file`, JSON `image_b64`, or JSON `image_url` (when allowed),
within limits."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from fastapi import HTTPException, Request
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from xmodal.app.bodies import parse_json
from xmodal.app.errors import ApiError
from xmodal.app.fetch import FetchError, fetch_image, fetch_slots, parse_networks
from xmodal.app.settings import Settings
from xmodal.models.errors import InvalidInput, Malformed, TooLarge
from xmodal.models.images import ImageError, ImageTooLarge, load_image

# Room for multipart boundaries/headers and base64's 4/3 growth over the image limit.
_ENVELOPE_BYTES = 64 * 1024


@dataclass
class ImageInput:
    image: Image.Image
    fields: dict  # the request's other fields (k, target, ...), unvalidated


async def read_image_input(request: Request, settings: Settings) -> ImageInput:
    """Decode the request's image (off the event loop); every failure is a typed 4xx (models/errors.py)."""
    data, fields = await _read_image_bytes(request, settings)
    return ImageInput(await _decode(data, settings), fields)


async def _decode(data: bytes, settings: Settings) -> Image.Image:
    try:
        return await run_in_threadpool(load_image, data, settings.max_pixels)
    except ImageTooLarge as exc:
        raise TooLarge(f"image too large: {exc}") from exc
    except ImageError as exc:
        raise InvalidInput(f"unreadable image: {exc}") from exc


async def _read_image_bytes(request: Request, settings: Settings) -> tuple[bytes, dict]:
    limit = settings.max_upload_bytes
    _check_declared_length(request, limit * 4 // 3 + _ENVELOPE_BYTES)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        data, fields = await _from_multipart(request, limit)
    elif content_type == "application/json":
        data, fields = await _from_json(request, settings)
    else:
        raise ApiError(
            415,
            f"unsupported content type {content_type or '(none)'}: send multipart/form-data "
            "with a 'file' field, or application/json with 'image_b64'",
        )
    _check_size(data, limit)
    return data, fields


def _check_size(data: bytes, limit: int) -> None:
    if not data:
        raise InvalidInput("the image is empty (0 bytes)")
    if len(data) > limit:
        raise TooLarge(f"image is {len(data):,} bytes, over the limit of {limit:,}")


async def _from_multipart(request: Request, limit: int) -> tuple[bytes, dict]:
    try:
        form = await request.form(max_files=1, max_fields=16)
    except HTTPException:
        raise  # the body limit (app/middleware.py)
    except Exception as exc:  # noqa: BLE001 - starlette raises several types for malformed forms
        raise Malformed(f"malformed multipart body: {exc}") from exc
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise InvalidInput("multipart field 'file' (the image) is required")
    data = await upload.read(limit + 1)
    fields = {key: value for key, value in form.items() if key != "file" and isinstance(value, str)}
    return data, fields


async def read_json_payload(request: Request, settings: Settings) -> object:
    """A JSON body within the upload limit (room for base64), parsed by app.bodies.parse_json (400 when it is
    not JSON, nested too deeply or holds a non-finite number)."""
    return parse_json(await read_body(request, settings.max_upload_bytes * 4 // 3 + _ENVELOPE_BYTES))


async def image_from_payload(payload: dict, settings: Settings) -> ImageInput:
    """The image of an already parsed JSON body (`image_b64`, or `image_url` when allowed), decoded."""
    data, fields = await _image_bytes_from_payload(payload, settings)
    _check_size(data, settings.max_upload_bytes)
    return ImageInput(await _decode(data, settings), fields)


async def _from_json(request: Request, settings: Settings) -> tuple[bytes, dict]:
    return await _image_bytes_from_payload(await read_json_payload(request, settings), settings)


async def _image_bytes_from_payload(payload: object, settings: Settings) -> tuple[bytes, dict]:
    if isinstance(payload, dict) and "image_b64" not in payload and isinstance(payload.get("image_url"), str):
        return await _from_url(payload, settings), payload
    if not isinstance(payload, dict) or not isinstance(payload.get("image_b64"), str):
        more = " (or 'image_url')" if settings.allow_image_url else ""
        raise InvalidInput(f"JSON body needs a string field 'image_b64'{more}")
    encoded = payload.pop("image_b64")
    if encoded.startswith("data:") and "," in encoded:
        encoded = encoded.split(",", 1)[1]  # accept data URLs from browsers
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"image_b64 is not valid base64: {exc}") from exc
    return data, payload


async def _from_url(payload: dict, settings: Settings) -> bytes:
    url = payload.pop("image_url")
    if not settings.allow_image_url:
        raise InvalidInput("image_url is turned off on this server (XMODAL_ALLOW_IMAGE_URL); send image_b64")
    try:
        async with fetch_slots(settings.image_url_max_concurrent).slot():
            return await fetch_image(
                url,
                max_bytes=settings.max_upload_bytes,
                timeout_s=settings.image_url_timeout_s,
                allowed=parse_networks(settings.image_url_allowed_networks),
            )
    except FetchError as exc:
        raise ApiError(exc.status, exc.detail, headers=exc.headers) from exc


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused with 413 once it passes `limit` (also when no length was declared)."""
    _check_declared_length(request, limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body over the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _check_declared_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"request body is {int(declared):,} bytes, over the limit of {limit:,}")
