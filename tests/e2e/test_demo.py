"""`xmodal demo` end to end as `make demo` runs it: train (tiny and brief here), index, then serve."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import TINY_DEMO_ARGS
from xmodal.app.testing import Server

pytestmark = pytest.mark.e2e


def test_demo_trains_indexes_and_serves(tmp_path):
    command = ["demo", "--cache-dir", tmp_path / "demo", *TINY_DEMO_ARGS]
    with Server(None, tmp_path / "demo.log", command=command) as demo:
        demo.wait_ready(timeout=240)
        assert "curl -s 127.0.0.1:" in demo.log() and "/v1/search/text" in demo.log()
        with httpx.Client(base_url=demo.url, timeout=60) as http:
            found = http.post("/v1/search/text", json={"text": "a large red circle", "k": 3})
            assert found.status_code == 200, found.text
            assert len(found.json()["results"]) == 3
            assert all(r["path"].endswith(".png") for r in found.json()["results"])
            # The demo serves with the decoder checking each search's best results.
            assert all(r["match"] is not None and r["match"] <= 0 for r in found.json()["results"])
