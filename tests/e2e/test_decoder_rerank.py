"""Text search re-ranked by the decoder (`decoder_rerank`) on a real `xmodal serve`, and `xmodal eval --server`
measuring search through it.

The server indexes 40 of the world's held-out scenes under their ids, as `xmodal demo` does, with the tiny CoCa
(random weights: arbitrary but distinct scores make any difference between the served and the in-process
re-ranking visible). Oracle: the decoder in the test process on the same files.
"""

from __future__ import annotations

import json

import httpx
import pytest
import torch
from typer.testing import CliRunner

from xmodal.app.cli import cli
from xmodal.app.testing import Server, run_xmodal
from xmodal.models.decoding import CocaDecoder
from xmodal.models.images import load_image
from xmodal.models.languages import language_prompts
from xmodal.models.loading import load_model
from xmodal.models.rerank import presence_scores, rerank_order
from xmodal.models.world import World, write_scenes

pytestmark = pytest.mark.e2e
SCENES = 40
QUERY = "a red circle on the left"


@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("world-scenes")
    write_scenes(World(seed=0).scenes(SCENES, "heldout"), folder, image_size=64)
    return folder


@pytest.fixture(scope="module")
def world_server(scenes_dir, tiny_coca_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("world-index")
    model = f"local-dir:{tiny_coca_dir}"
    built = run_xmodal(
        "index", scenes_dir / "images", "--out", out, "--model", model, "--workers", "0", "--no-progress"
    )
    assert built.returncode == 0, built.stderr
    env = {"XMODAL_RATE_LIMIT_RPS": "0", "XMODAL_MAX_DECODER_RERANK": "20"}
    with Server(out, tmp_path_factory.mktemp("logs") / "server.log", env=env) as running:
        running.wait_ready()
        yield running


def _search(server: Server, **body) -> httpx.Response:
    return httpx.post(server.url + "/v1/search/text", json={"text": QUERY, **body}, timeout=60)


def test_the_decoder_sorts_the_first_results_by_whether_they_show_the_query(world_server, scenes_dir, tiny_coca_dir):
    plain = _search(world_server, k=12).json()["results"]
    checked = _search(world_server, k=12, decoder_rerank=8).json()["results"]
    assert all(hit["match"] is None for hit in plain)
    head, tail = checked[:8], checked[8:]
    assert sorted(hit["id"] for hit in head) == sorted(hit["id"] for hit in plain[:8])
    assert tail == plain[8:]  # the rest keep the embedding's order
    matches = [hit["match"] for hit in head]
    assert rerank_order(matches, [hit["score"] for hit in head]) == list(range(8)) and len(set(matches)) == 8
    assert [hit["score"] for hit in head] == [next(p["score"] for p in plain if p["id"] == h["id"]) for h in head]

    loaded = load_model(f"local-dir:{tiny_coca_dir}", "cpu", threads=1)
    decoder = CocaDecoder(loaded.model, loaded.tokenizer)
    pixels = torch.stack([loaded.preprocess(load_image(scenes_dir / "images" / hit["path"])) for hit in head])
    expected = presence_scores(decoder, decoder.image_tokens(pixels), language_prompts("en"), QUERY)
    assert matches == pytest.approx(expected.tolist(), abs=1e-4)

    page = _search(world_server, k=3, offset=2, decoder_rerank=8).json()["results"]
    assert page == checked[2:5]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"decoder_rerank": 21}, "decoder_rerank must be between 0 and 20"),
        ({"decoder_rerank": -1}, "decoder_rerank must be between 0 and 20"),
        ({"decoder_rerank": 4, "language": "fr"}, "not 'fr'"),
    ],
)
def test_bad_re_ranking_options_are_422(world_server, body, message):
    response = _search(world_server, **body)
    assert response.status_code == 422 and message in response.json()["detail"]


def test_eval_measures_search_through_the_server_as_in_process(world_server, tiny_coca_dir, tmp_path):
    args = ["eval", "--model", f"local-dir:{tiny_coca_dir}", "--server", world_server.url, "--scenes", str(SCENES)]
    args += ["--queries", "30", "--captions", "0", "--questions-per-type", "0", "--decoder-rerank", "6"]
    result = CliRunner().invoke(cli, [*args, "--threads", "1", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval.json").read_text())
    in_process, served = report["world"]["metrics"], report["server"]["metrics"]
    keys = [f"{name}@{k}" for name in ("t2i_p", "t2i_rerank_p") for k in (1, 5, 10)]
    assert set(keys) <= set(served)
    assert {k: served[k] for k in keys} == pytest.approx({k: in_process[k] for k in keys}, abs=1e-9)
    assert report["server"]["counts"]["queries"] == report["world"]["counts"]["queries"]


def test_a_result_whose_file_is_gone_is_left_unchecked_after_the_checked_ones(world_server, scenes_dir):
    before = _search(world_server, k=6, decoder_rerank=6).json()["results"]
    gone = scenes_dir / "images" / before[0]["path"]
    kept = gone.read_bytes()
    gone.unlink()
    try:
        after = _search(world_server, k=6, decoder_rerank=6).json()["results"]
    finally:
        gone.write_bytes(kept)
    assert after[-1]["id"] == before[0]["id"] and after[-1]["match"] is None
    assert [hit["id"] for hit in after[:-1]] == [hit["id"] for hit in before[1:]]
    assert f"decoder re-ranking left item {before[0]['id']} unchecked" in world_server.wait_for_log("unchecked")
