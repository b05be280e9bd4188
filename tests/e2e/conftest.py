from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import COCO_MINI, missing_data
from xmodal.app.testing import Server, run_xmodal

LIMITS = {
    "XMODAL_MAX_UPLOAD_BYTES": "3000000",
    "XMODAL_MAX_PIXELS": "30000000",
    "XMODAL_MAX_TEXT_CHARS": "200",
    "XMODAL_MAX_K": "1000",
    "XMODAL_RATE_LIMIT_RPS": "0",  # the shared server takes every test's requests; limits: test_security_http.py
}


@pytest.fixture(scope="session")
def coco_index_dir(tiny_coca_dir, tmp_path_factory):
    """`xmodal index` on coco-mini with captions, as a user would run it."""
    if not COCO_MINI.is_dir():
        missing_data(COCO_MINI)
    out = tmp_path_factory.mktemp("e2e") / "coco-index"
    result = run_xmodal(
        "index",
        COCO_MINI,
        "--out",
        out,
        "--model",
        f"local-dir:{tiny_coca_dir}",
        "--captions",
        COCO_MINI / "captions.csv",
        "--workers",
        "1",
        "--json",
        "--no-draft",  # the tiny model's 32-px input magnifies draft decoding's drift; the server decodes fully
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["indexed"], report["captions"], report["skipped"]) == (159, 795, 0)
    return out


@pytest.fixture(scope="session")
def server(coco_index_dir, tmp_path_factory):
    with Server(coco_index_dir, tmp_path_factory.mktemp("logs") / "server.log", env=LIMITS) as running:
        running.wait_ready()
        yield running


@pytest.fixture(scope="session")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http
