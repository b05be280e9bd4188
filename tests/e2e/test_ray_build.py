"""`xmodal index --ray` on a real two-node Ray cluster (separate processes on this machine) builds the same
index as the single-process build: same items and skips, the same vectors, the same search results; it
survives a lost worker node, and a rerun after a killed driver embeds only the parts that were missing.
Duplicates (also across parts), skips, captions, `--update` and the report are those of the single build."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import COCO_MINI, TINY_CLIP, requires_data
from xmodal.app.testing import XMODAL, run_xmodal

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.e2e, pytest.mark.slow, requires_data(COCO_MINI)]

# The tiny model's 32-px input magnifies draft decoding's drift; one decode worker keeps the 2 cores free.
BUILD = ["--model", TINY_CLIP, "--captions", COCO_MINI / "captions.csv", "--no-draft", "--json", "--no-progress"]
IMAGES = COCO_MINI / "images"
PART_SIZE = 8  # 20 parts: enough for a node loss or a driver kill to land in the middle


@pytest.fixture(scope="module")
def cluster():
    """A head node and one worker node, one CPU each, as their own processes."""
    from ray.cluster_utils import Cluster

    started = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    started.add_node(num_cpus=1)
    started.wait_for_nodes()
    yield started
    started.shutdown()


@pytest.fixture(scope="module")
def single_build(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "index"
    result = run_xmodal("index", IMAGES, "--out", out, "--workers", "1", *BUILD)
    assert result.returncode == 0, result.stderr
    return out


def _ray_build(out: Path, address: str, *extra: str, source: Path = IMAGES, build=BUILD) -> subprocess.Popen:
    args = [XMODAL, "index", source, "--out", out, *build, "--ray", address, "--ray-part-size", str(PART_SIZE)]
    return subprocess.Popen(
        [*map(str, args), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _finish(process: subprocess.Popen) -> dict:
    stdout, stderr = process.communicate(timeout=420)
    assert process.returncode == 0, stderr[-4000:]
    try:
        return json.loads(stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"not a JSON report: {stdout[-2000:]!r}\n{stderr[-4000:]}") from exc


def _finished_parts(out: Path) -> list[Path]:
    return sorted(out.glob(".ray-parts/*/part-*.parquet"))


def _wait_for_parts(out: Path, process: subprocess.Popen, count: int = 1) -> None:
    deadline = time.monotonic() + 300
    while len(_finished_parts(out)) < count:
        assert process.poll() is None, process.communicate()[1][-4000:]
        assert time.monotonic() < deadline, "no part was written"
        time.sleep(0.05)


ITEM_COLUMNS = ("path", "sha256", "width", "height", "captions", "duplicates")


def assert_same_index(ray_out: Path, single_out: Path) -> None:
    """assert_same_version, and the same top-10 for text and image queries over both indexes."""
    from xmodal.indexer import store
    from xmodal.indexer.reader import OpenIndex
    from xmodal.models.encoders import Encoder

    assert_same_version(ray_out, single_out, ITEM_COLUMNS)
    built, expected = OpenIndex(ray_out), OpenIndex(single_out)
    assert built.manifest.model == expected.manifest.model
    theirs = store.read_vectors(expected.version, expected.manifest.images.embeddings).astype(np.float32)
    encoder = Encoder.from_spec(TINY_CLIP, "cpu")
    texts = encoder.encode_texts(["a dog on a couch", "a plate of food", "people on a street"])
    for a, b in zip(built.search_images(texts, 10), expected.search_images(texts, 10)):
        assert [i for i, _ in a] == [i for i, _ in b]
    queries = theirs[[0, 50, 100]]
    for a, b in zip(built.search_images(queries, 10), expected.search_images(queries, 10)):
        assert [i for i, _ in a] == [i for i, _ in b]
    for a, b in zip(built.search_texts(queries, 10), expected.search_texts(queries, 10)):
        assert [i for i, _ in a] == [i for i, _ in b]


def test_ray_build_equals_the_single_process_build(cluster, single_build, tmp_path):
    out = tmp_path / "index"
    report = _finish(_ray_build(out, cluster.address))
    assert (report["indexed"], report["embedded"], report["skipped"], report["captions"]) == (159, 159, 0, 795)
    assert report["resumed_batches"] == 0
    assert_same_index(out, single_build)
    assert not (out / ".ray-parts").exists()  # the parts go once the version is published


def test_a_lost_worker_node_does_not_lose_the_build(cluster, single_build, tmp_path):
    doomed = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    out = tmp_path / "index"
    process = _ray_build(out, cluster.address)
    _wait_for_parts(out, process)
    cluster.remove_node(doomed)  # kills that node's raylet, object store and workers
    report = _finish(process)
    assert (report["indexed"], report["skipped"]) == (159, 0)
    assert_same_index(out, single_build)


def test_a_rerun_after_a_killed_driver_embeds_only_the_missing_parts(cluster, single_build, tmp_path):
    out = tmp_path / "index"
    process = _ray_build(out, cluster.address)
    _wait_for_parts(out, process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = _finished_parts(out)
    assert finished and not (out / "CURRENT").exists()
    done_records = sum(pq.read_metadata(part).num_rows for part in finished)

    report = _finish(_ray_build(out, cluster.address))
    assert report["resumed_batches"] == len(finished)
    assert report["embedded"] == 159 - done_records
    assert report["indexed"] == 159
    assert_same_index(out, single_build)


def test_duplicates_skips_captions_and_update_match_the_single_build(cluster, tmp_path):
    """A folder with a broken file and a picture three times (twice in the next part), built, then changed (one
    file edited, one deleted, three added, a copy of an unchanged one) and updated with and without --ray from
    the same published version: the versions and every report count are the same, and the Ray update encodes
    only the changed and new files (and the copies, which the reduce then points at the first one)."""
    coco = sorted(IMAGES.iterdir())
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(20):
        shutil.copy(coco[i], folder / f"img{i:02d}.jpg")
    (folder / "img05.jpg").write_bytes(b"not a picture")
    for copy in ("img09.jpg", "img10.jpg"):  # part 1 (parts of 8): copies of img00 in part 0
        shutil.copy(coco[0], folder / copy)
    captions = tmp_path / "captions.csv"
    captions.write_text("image,caption\nimg00.jpg,a first caption\nimg01.jpg,another one\nimg21.jpg,a new one\n")
    build = ["--model", TINY_CLIP, "--captions", captions, "--no-draft", "--json", "--no-progress"]
    single, on_ray = tmp_path / "single", tmp_path / "ray"
    result = run_xmodal("index", folder, "--out", single, "--workers", "1", *build)
    assert result.returncode == 0, result.stderr
    assert _counts(json.loads(result.stdout)) == (17, 17, 0, 2, 1, 2)
    shutil.copytree(single, on_ray)

    shutil.copy(coco[30], folder / "img02.jpg")
    (folder / "img07.jpg").unlink()
    for i in (20, 21, 22):
        shutil.copy(coco[i], folder / f"img{i:02d}.jpg")
    shutil.copy(coco[1], folder / "img23.jpg")  # a copy of an unchanged (reused) file
    result = run_xmodal("index", folder, "--out", single, "--workers", "1", *build, "--update")
    assert result.returncode == 0, result.stderr
    report = _finish(_ray_build(on_ray, cluster.address, "--update", source=folder, build=build))
    assert _counts(report) == _counts(json.loads(result.stdout)) == (19, 4, 15, 3, 1, 3)
    assert_same_version(on_ray, single)


def _counts(report: dict) -> tuple[int, ...]:
    return tuple(report[name] for name in ("indexed", "embedded", "reused", "duplicates", "skipped", "captions"))


def assert_same_version(
    ray_out: Path, single_out: Path, columns: tuple[str, ...] = (*ITEM_COLUMNS, "generated_caption")
) -> None:
    """Same items (duplicates, captions, sizes), skips and texts, and the same vectors up to float noise."""
    from xmodal.indexer import store
    from xmodal.indexer.reader import OpenIndex

    built, expected = OpenIndex(ray_out), OpenIndex(single_out)
    assert built.items.select(list(columns)).to_pylist() == expected.items.select(list(columns)).to_pylist()
    assert store.read_table(built.version, "skipped").to_pylist() == (
        store.read_table(expected.version, "skipped").to_pylist()
    )
    assert built.texts is not None and expected.texts is not None
    assert built.texts.to_pylist() == expected.texts.to_pylist()
    ours = store.read_vectors(built.version, built.manifest.images.embeddings).astype(np.float32)
    theirs = store.read_vectors(expected.version, expected.manifest.images.embeddings).astype(np.float32)
    cosine = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cosine.min() >= 0.9999


def test_ray_flag_without_ray_installed_says_how_to_install(tmp_path):
    blocker = tmp_path / "no-ray"
    blocker.mkdir()
    (blocker / "ray.py").write_text("raise ImportError('No module named ray (blocked by the test)')\n")
    path = os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])
    result = run_xmodal(
        "index", IMAGES, "--out", tmp_path / "index", *BUILD, "--ray", "local", env={"PYTHONPATH": path}
    )
    assert result.returncode == 2
    assert "pip install 'xmodal[ray]'" in result.stderr
    assert not (tmp_path / "index" / "CURRENT").exists()
