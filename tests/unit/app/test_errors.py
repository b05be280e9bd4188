"""app/errors.py: typed errors become the status their kind means; anything else is one logged 500 with the
request id, never the client's fault."""

from __future__ import annotations

import logging

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from xmodal.app.batching import Overloaded
from xmodal.app.errors import ApiError, install_error_handlers
from xmodal.app.middleware import install_middleware
from xmodal.app.settings import Settings
from xmodal.indexer.filters import FilterError
from xmodal.indexer.store import IndexNotFound
from xmodal.models import errors
from xmodal.models.generation import DecoderUnavailable
from xmodal.models.images import ImageError, ImageTooLarge

RAISED = {
    "invalid": errors.InvalidInput("k must be between 1 and 50"),
    "malformed": errors.Malformed("body is not valid JSON"),
    "too-large": ImageTooLarge("50M pixels"),
    "image": ImageError("not an image"),
    "filter": FilterError("cannot filter on 'x'"),
    "not-found": IndexNotFound("no CURRENT"),
    "conflict": errors.Conflict("built with other weights"),
    "overloaded": Overloaded("text queue is full"),
    "unavailable": errors.Unavailable("still loading"),
    "unsupported": DecoderUnavailable("no text decoder"),
    "api": ApiError(403, "this route needs admin"),
    "value-error": ValueError("a bug, not the client's fault"),
    "plain-xmodal": errors.XmodalError("a typed error of no HTTP kind"),
}
STATUS = {
    "invalid": 422,
    "malformed": 400,
    "too-large": 413,
    "image": 422,
    "filter": 422,
    "not-found": 404,
    "conflict": 409,
    "overloaded": 429,
    "unavailable": 503,
    "unsupported": 501,
    "api": 403,
    "value-error": 500,
    "plain-xmodal": 500,
}


@pytest.fixture(scope="module")
def client():
    app = FastAPI()
    install_error_handlers(app)
    install_middleware(app, Settings())

    @app.get("/raise/{name}")
    async def raise_it(name: str) -> dict:
        raise RAISED[name]

    with TestClient(app) as http:  # raise_server_exceptions: nothing may escape the app, 500s included
        yield http


@pytest.mark.parametrize("name", sorted(RAISED))
def test_each_kind_has_its_status(client, name):
    response = client.get(f"/raise/{name}")
    assert response.status_code == STATUS[name], response.text
    if response.status_code < 500:
        assert response.json()["detail"].endswith(str(RAISED[name]))


def test_retry_after_on_unavailable_and_overloaded(client):
    assert client.get("/raise/unavailable").headers["retry-after"] == "5"
    assert client.get("/raise/overloaded").headers["retry-after"] == "1"


def test_a_bug_is_a_500_with_the_request_id_logged_once_with_its_traceback(client, caplog):
    with caplog.at_level(logging.ERROR):
        response = client.get("/raise/value-error", headers={"X-Request-ID": "req-42"})
    assert response.status_code == 500
    body = response.json()
    assert body["request_id"] == "req-42" == response.headers["x-request-id"]
    assert "req-42" in body["detail"] and "a bug" not in body["detail"]  # no internals to the client
    logged = [record for record in caplog.records if record.exc_info]
    assert len(logged) == 1 and "req-42" in logged[0].getMessage()
    assert isinstance(logged[0].exc_info[1], ValueError)
