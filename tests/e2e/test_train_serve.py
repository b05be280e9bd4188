"""Train with `xmodal train`, index with the result, serve it, and find scenes by shape and colour.

The world is cut down to what a tiny model learns reliably in a few seconds: one large object
in the centre, two colours by two shapes, on the world's three backgrounds with its jitter.
Each image has its canonical caption and the short "a red circle" form as captions, so the
query texts are texts the model was trained on.
"""

from __future__ import annotations

import json
import random

import httpx
import pytest

from xmodal.app.testing import Server, run_xmodal
from xmodal.models.world import Scene, SceneGraph, SceneObject, canonical_caption, write_scenes
from xmodal.models.world.scene import BACKGROUNDS, JITTER, RADIUS_JITTER

pytestmark = pytest.mark.e2e

COLOURS = ("red", "blue")
SHAPES = ("circle", "square")
# The contrastive loss reaches its floor (every batch's classes apart) by about step 120; with
# this seed the 4 classes end with a score margin above 0.4 (least relevant vs most irrelevant).
# The caption loss is turned down: only retrieval is tested here.
TRAIN_SETTINGS = (
    "--steps",
    "160",
    "--batch-size",
    "16",
    "--lr",
    "2e-3",
    "--warmup",
    "5",
    "--caption-weight",
    "0.1",
    "--contrastive-texts",
    "1",
    "--decoder-targets",
    "1",
    "--decoder-lr-scale",
    "1",
    "--weight-decay",
    "0.1",
    "--train-seed",
    "0",
    "--threads",
    "1",
    "--workers",
    "0",
    "--checkpoint-every",
    "80",
)


def toy_scenes(per_kind: int) -> list[Scene]:
    rng = random.Random(0)
    scenes = []
    for colour in COLOURS:
        for shape in SHAPES:
            for i in range(per_kind):
                obj = SceneObject(
                    shape,
                    colour,
                    "large",
                    "centre",
                    dx=rng.uniform(-JITTER, JITTER),
                    dy=rng.uniform(-JITTER, JITTER),
                    dr=rng.uniform(-RADIUS_JITTER, RADIUS_JITTER),
                )
                graph = SceneGraph(objects=(obj,), background=rng.choice(tuple(BACKGROUNDS)))
                captions = (canonical_caption(graph), f"a {colour} {shape}")
                scenes.append(Scene(f"toy-{colour}-{shape}-{i}", i, graph, captions, (), "train"))
    return scenes


@pytest.fixture(scope="module")
def trained_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-serve")
    write_scenes(toy_scenes(per_kind=8), root / "data", image_size=32)
    model = root / "model"
    trained = run_xmodal(
        "train",
        "--data",
        root / "data" / "captions.csv",
        "--model",
        "xmodal-tiny-coca",
        "--out",
        model,
        *TRAIN_SETTINGS,
        "--no-progress",
    )
    assert trained.returncode == 0, trained.stderr
    assert "model written to" in trained.stdout
    record = json.loads((model / "training.json").read_text())
    assert record["steps"] == 160 and record["curve"][-1]["contrastive_loss"] < record["curve"][0]["contrastive_loss"]

    built = run_xmodal(
        "index",
        root / "data" / "images",
        "--out",
        root / "index",
        "--model",
        f"local-dir:{model}",
        "--captions",
        root / "data" / "captions.csv",
        "--workers",
        "0",
        "--no-progress",
    )
    assert built.returncode == 0, built.stderr
    return root


def test_a_trained_model_finds_scenes_by_shape_and_colour(trained_index):
    with Server(trained_index / "index", trained_index / "server.log") as server:
        server.wait_ready()
        for colour in COLOURS:
            for shape in SHAPES:
                response = httpx.post(server.url + "/v1/search/text", json={"text": f"a {colour} {shape}", "k": 3})
                assert response.status_code == 200, response.text
                for result in response.json()["results"]:
                    assert f"a {colour} {shape}" in result["captions"], (colour, shape, result)


def test_eval_reports_recall_of_the_index(trained_index, tmp_path):
    from typer.testing import CliRunner

    from xmodal.app.cli import cli

    # In-process: the index is what matters here, not another process start.
    result = CliRunner().invoke(cli, ["eval", "--index", str(trained_index / "index"), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    recall = json.loads((tmp_path / "eval.json").read_text())["indexes"][str(trained_index / "index")]
    # Each image's own captions are among the 10 nearest; the 8 images of a kind share their two
    # captions. (At 32 px a few images of a kind are identical files, which the index keeps once.)
    assert recall["i2t_r@10"] == 1.0 and recall["texts"] == 2 * recall["images"] >= 50
    assert (tmp_path / "eval.png").stat().st_size > 1000
    assert "R@10" in result.output
