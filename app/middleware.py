"""ASGI middleware: a body limit for every route, and request ids with one access-log line and metrics; responses
of requests that read an index say which version answered (`X-Xmodal-Index-Version`)."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar

from fastapi import HTTPException

from xmodal.app.logs import escape, request_id_var

log = logging.getLogger("xmodal.access")

_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
INDEX_VERSION_HEADER = "X-Xmodal-Index-Version"
# The version of the index a request picked (set by deps.pick_index): with several replicas, or during a hot swap,
# it tells a client which version answered.
index_version_var: ContextVar[str | None] = ContextVar("index_version", default=None)


class BodyLimitMiddleware:
    """Refuse request bodies over `limit` bytes with 413: by Content-Length at once, and while streaming."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _send_json(
                send, 413, f"request body is {int(declared):,} bytes, over the limit of {self.limit:,}"
            )
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # Handlers turn this into a JSON 413 (see app.errors); if one swallows it, we answer below.
                    raise HTTPException(413, f"request body over the limit of {self.limit:,} bytes")
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except HTTPException as exc:
            if started or exc.status_code != 413:
                raise
            await _send_json(send, 413, str(exc.detail))


class RequestContextMiddleware:
    """Give every request an id (`X-Request-ID`, the client's if sane), echo it, log one access line, and
    observe the latency per route template and status."""

    def __init__(self, app, observe: Callable[[str, str, int, float], None] | None = None):
        self.app, self.observe = app, observe

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and _SANE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        version_token = index_version_var.set(None)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                if (version := index_version_var.get()) is not None:
                    headers.append((INDEX_VERSION_HEADER.lower().encode(), version.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            if self.observe is not None:
                self.observe(scope["method"], route, status, seconds)
            client = scope.get("client")
            # Escaped here too (not only by our formatters): the path is percent-decoded client text, and
            # a handler configured elsewhere (plain uvicorn) would write a %0d%0a into the log as a new line.
            fields = {
                "method": escape(scope["method"]),
                "path": escape(scope["path"]),
                "route": escape(route),
                "status": status,
                "ms": round(seconds * 1000, 2),
                "request_id": request_id,
                "client": escape(client[0]) if client else None,
                "key": (scope.get("state") or {}).get("key_id"),
            }
            log.info(
                "%s %s %d %.1fms id=%s client=%s",
                fields["method"],
                fields["path"],
                status,
                fields["ms"],
                request_id,
                fields["client"],
                extra={"access": fields},
            )
            request_id_var.reset(token)
            index_version_var.reset(version_token)


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def _send_json(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def install_middleware(app, settings) -> None:
    """From the outside in: request id + access log + latency metrics, CORS (only for configured origins),
    the body limit, then the routes."""
    from fastapi.middleware.cors import CORSMiddleware

    from xmodal.app.prometheus import Metrics

    app.state.metrics = Metrics(lambda: getattr(app.state, "runtime", None))
    # Room for multipart boundaries/headers and base64's 4/3 growth over the image limit (as app/uploads.py).
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_upload_bytes * 4 // 3 + 64 * 1024)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After", INDEX_VERSION_HEADER],
            max_age=600,
        )
    app.add_middleware(RequestContextMiddleware, observe=app.state.metrics.observe)
