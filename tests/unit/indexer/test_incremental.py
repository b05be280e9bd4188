"""Resume after kill -9, --update, and exact duplicates."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

from xmodal.app.testing import XMODAL
from xmodal.indexer import store
from xmodal.indexer.build import BuildConfig, build_index
from xmodal.indexer.journal import JOURNAL
from xmodal.indexer.reader import OpenIndex
from xmodal.models.encoders import Encoder


@pytest.fixture(scope="module")
def encoder(tiny_coca_dir) -> Encoder:
    return Encoder.from_spec(f"local-dir:{tiny_coca_dir}", "cpu")


def _photos(folder, count, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (24 + i % 7, 30, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def _contents(out):
    index = OpenIndex(out)
    rows = index.item_rows(list(range(index.items.num_rows)))
    vectors = store.read_vectors(index.version, index.manifest.images.embeddings)
    return rows, vectors, index.manifest


@pytest.mark.slow
def test_kill_9_mid_build_then_rerun_equals_a_clean_build(tiny_coca_dir, tmp_path):
    photos = _photos(tmp_path / "photos", 60)
    command = [
        XMODAL,
        "index",
        str(photos),
        "--out",
        str(tmp_path / "resumed"),
        "--model",
        f"local-dir:{tiny_coca_dir}",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--no-progress",
    ]
    journal = tmp_path / "resumed" / JOURNAL
    victim = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(journal.glob("batch-*.npz"))) < 3:
        assert victim.poll() is None, "the build finished before it could be killed; make it longer"
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / "resumed" / "CURRENT").exists()  # nothing half-published

    rerun = subprocess.run(command + ["--json"], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert '"resumed_batches": 0' not in rerun.stdout  # it really continued
    assert not journal.exists()
    clean = subprocess.run([*command[:4], str(tmp_path / "clean"), *command[5:]], capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr

    resumed_rows, resumed_vectors, _ = _contents(tmp_path / "resumed")
    clean_rows, clean_vectors, _ = _contents(tmp_path / "clean")
    assert resumed_rows == clean_rows and len(resumed_rows) == 60
    assert np.array_equal(resumed_vectors, clean_vectors)


def test_update_adds_drops_and_re_embeds_only_what_changed(encoder, tmp_path):
    photos = _photos(tmp_path / "photos", 8)
    out = tmp_path / "index"
    first = build_index(BuildConfig(photos, out, batch_size=3, workers=0, progress=False), encoder)
    assert first.embedded == 8

    (photos / "000.png").unlink()  # deleted
    Image.new("RGB", (20, 20), (255, 0, 0)).save(photos / "001.png")  # changed
    Image.new("RGB", (20, 20), (0, 255, 0)).save(photos / "new.png")  # added
    updated = build_index(BuildConfig(photos, out, batch_size=3, workers=0, progress=False, update=True), encoder)
    assert (updated.embedded, updated.reused, updated.indexed) == (2, 6, 8)
    assert len(store.list_versions(out)) == 2 and (out / "CURRENT").read_text().strip() == updated.version.name

    rebuilt = build_index(BuildConfig(photos, tmp_path / "fresh", batch_size=3, workers=0, progress=False), encoder)
    assert rebuilt.embedded == 8
    updated_rows, updated_vectors, _ = _contents(out)
    fresh_rows, fresh_vectors, _ = _contents(tmp_path / "fresh")
    assert [r["path"] for r in updated_rows] == [r["path"] for r in fresh_rows]
    assert [r["sha256"] for r in updated_rows] == [r["sha256"] for r in fresh_rows]
    assert np.allclose(updated_vectors, fresh_vectors, atol=2e-3)  # reused vectors vs re-encoded ones


def test_update_refuses_another_model(encoder, tiny_clip_dir, tmp_path):
    from xmodal.indexer.build import BuildError

    photos = _photos(tmp_path / "photos", 2)
    build_index(BuildConfig(photos, tmp_path / "index", workers=0, progress=False), encoder)
    other = Encoder.from_spec(f"local-dir:{tiny_clip_dir}", "cpu")
    with pytest.raises(BuildError, match="--update needs the model"):
        build_index(BuildConfig(photos, tmp_path / "index", workers=0, progress=False, update=True), other)


def test_exact_duplicates_are_embedded_once_and_listed(encoder, tmp_path):
    photos = _photos(tmp_path / "photos", 4)
    (photos / "nested").mkdir()
    shutil.copy(photos / "002.png", photos / "nested" / "copy-of-2.png")
    shutil.copy(photos / "002.png", photos / "zz-again.png")
    report = build_index(BuildConfig(photos, tmp_path / "index", batch_size=2, workers=0, progress=False), encoder)
    assert (report.indexed, report.duplicates, report.embedded) == (4, 2, 4)
    rows, vectors, manifest = _contents(tmp_path / "index")
    assert len(vectors) == 4 and manifest.duplicates == 2
    assert next(r for r in rows if r["path"] == "002.png")["duplicates"] == ["nested/copy-of-2.png", "zz-again.png"]


def test_update_keeps_the_captions_generated_for_unchanged_files(encoder, tmp_path):
    photos = _photos(tmp_path / "photos", 3)
    out = tmp_path / "index"
    build_index(BuildConfig(photos, out, workers=0, progress=False, caption=True), encoder)
    before = {r["path"]: r["captions"] for r in _contents(out)[0]}
    assert all(len(captions) == 1 for captions in before.values())
    Image.new("RGB", (20, 20), (0, 0, 255)).save(photos / "added.png")
    updated = build_index(BuildConfig(photos, out, workers=0, progress=False, caption=True, update=True), encoder)
    assert (updated.reused, updated.embedded) == (3, 1)
    after = {r["path"]: r["captions"] for r in _contents(out)[0]}
    assert {path: after[path] for path in before} == before and len(after["added.png"]) == 1
