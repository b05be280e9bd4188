"""`xmodal eval --model M --server URL`: captions and answers through the HTTP endpoints equal the
in-process evaluation of the same model, prediction for prediction."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from xmodal.app.cli import cli

pytestmark = pytest.mark.e2e


def test_endpoints_answer_what_the_model_answers_in_process(server, tiny_coca_dir, tmp_path):
    # The session server runs the tiny CoCa (random weights): long, arbitrary captions and answers
    # make any difference in decoding or preprocessing visible.
    args = [
        "eval",
        "--model",
        f"local-dir:{tiny_coca_dir}",
        "--server",
        server.url,
        "--scenes",
        "12",
        "--captions",
        "6",
        "--questions-per-type",
        "2",
        "--queries",
        "20",
        "--threads",
        "1",
        "--out",
        str(tmp_path),
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval.json").read_text())
    in_process, served = report["world"], report["server"]
    assert served["counts"] == {"captioned": 6, "questions": 12}
    assert served["served"]["fingerprint"] == in_process["fingerprint"]
    for key in ("captions", "vqa_generated", "vqa_ranked"):
        assert served["examples"][key] == in_process["examples"][key][: len(served["examples"][key])]
    assert {k: v for k, v in in_process["metrics"].items() if k in served["metrics"]} == served["metrics"]
    assert "caption_exact" in served["metrics"] and "vqa_ranked_all" in served["metrics"]
    assert "in process" in result.output and "endpoints" in result.output


def test_eval_says_when_the_server_is_not_there(tmp_path):
    result = CliRunner().invoke(
        cli, ["eval", "--server", "http://127.0.0.1:9", "--scenes", "10", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "cannot reach http://127.0.0.1:9" in result.output
