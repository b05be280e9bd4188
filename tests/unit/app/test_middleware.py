from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel

from xmodal.app.errors import install_error_handlers
from xmodal.app.logs import TEXT_FORMAT, JsonFormatter, TextFormatter, escape, make_handler
from xmodal.app.middleware import BodyLimitMiddleware, RequestContextMiddleware


class Body(BaseModel):
    text: str


def _app(observed: list) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/json/{name}")
    async def parsed(name: str, body: Body) -> dict:
        return {"n": len(body.text)}

    @app.post("/raw")
    async def raw(request: Request) -> dict:
        return {"n": len(await request.body())}

    app.add_middleware(BodyLimitMiddleware, limit=1000)
    app.add_middleware(RequestContextMiddleware, observe=lambda *args: observed.append(args))
    return app


def test_bodies_over_the_limit_are_413_by_length_and_while_streaming():
    client = TestClient(_app([]))
    assert client.post("/json/a", json={"text": "x" * 100}).json() == {"n": 100}
    declared = client.post("/json/a", json={"text": "x" * 2000})
    assert declared.status_code == 413 and "over the limit" in declared.json()["detail"]

    def chunks():  # no Content-Length: chunked transfer
        for _ in range(5):
            yield b"x" * 300

    for path in ("/json/a", "/raw"):
        streamed = client.post(path, content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413, streamed.text
    assert client.post("/raw", content=iter([b"x" * 300])).json() == {"n": 300}


def test_request_ids_are_echoed_or_made_and_requests_observed_by_route_template(caplog):
    observed = []
    client = TestClient(_app(observed))
    with caplog.at_level(logging.INFO, logger="xmodal.access"):
        given = client.post("/json/abc", json={"text": "hi"}, headers={"X-Request-ID": "req-42"})
        made = client.post("/json/abc", json={"text": "hi"}, headers={"X-Request-ID": "bad id\twith spaces"})
    assert given.headers["x-request-id"] == "req-42"
    assert len(made.headers["x-request-id"]) == 32 and made.headers["x-request-id"] != "bad id\twith spaces"
    assert [(m, route, status) for m, route, status, _ in observed] == [("POST", "/json/{name}", 200)] * 2
    line = json.loads(JsonFormatter().format(caplog.records[0]))
    assert line["request_id"] == "req-42" and line["status"] == 200 and line["path"] == "/json/abc"
    assert {"method", "ms", "client", "route", "ts", "level"} <= set(line)


FORGED = "/json/x%0d%0a2026-01-01 00:00:00,000 INFO xmodal.access: GET /admin 200%E2%80%A8%1b[2J%C2%85"


def test_no_client_text_can_forge_a_log_line_in_either_format(caplog):
    client = TestClient(_app([]))
    with caplog.at_level(logging.INFO, logger="xmodal.access"):
        client.post(FORGED, json={"text": "hi"})
    record = caplog.records[-1]
    text = TextFormatter(TEXT_FORMAT).format(record)
    assert "\n" not in text and "\r" not in text and "\x1b" not in text and "\u2028" not in text
    assert "\x85" not in text and r"x\r\n2026-01-01" in text
    line = JsonFormatter().format(record)
    assert len(line.splitlines()) == 1
    parsed = json.loads(line)
    for value in (parsed["path"], parsed["msg"]):
        assert not any(ch in value for ch in "\r\n\x1b\u2028\x85") and r"\r\n2026" in value


def test_other_loggers_messages_are_escaped_in_text_too():
    record = logging.LogRecord("xmodal.x", logging.WARNING, __file__, 1, "skipped %s", ("a\nERROR forged",), None)
    assert TextFormatter(TEXT_FORMAT).format(record).endswith(r"skipped a\nERROR forged")
    assert make_handler("text").formatter.__class__ is TextFormatter
    assert escape("tab\there") == r"tab\there" and escape(3) == 3 and escape("\u202e") == r"\u202e"
