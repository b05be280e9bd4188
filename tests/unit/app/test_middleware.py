from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel

from xmodal.app.errors import install_error_handlers
from xmodal.app.logs import JsonFormatter
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
