"""The Ray build's parts on disk (indexer.parts) and the reduce over them (indexer.distributed), without Ray."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from xmodal.indexer.build import BuildError
from xmodal.indexer.distributed import _reduced_parts
from xmodal.indexer.parts import PARTS, Parts

SIGNATURE = {"source": "/photos", "records": 4, "model": "abc"}


def _row(key: str, sha: str | None, status: str = "embedded", **extra) -> dict:
    return {"key": key, "sha256": sha, "status": status, "width": 4, "height": 3, **extra}


def test_parts_round_trip_and_resume(tmp_path):
    parts = Parts.open(tmp_path, SIGNATURE)
    vectors = np.arange(6, dtype=np.float32).reshape(2, 3)
    rows = [_row("a.jpg", "1"), _row("b.jpg", None, "skipped", reason="truncated"), _row("c.jpg", "2")]
    parts.write(1, 3, rows, vectors, "abc")
    assert parts.finished() == {1}
    assert not list(parts.folder.glob("*.tmp"))

    again = Parts.open(tmp_path, SIGNATURE)  # a rerun finds the part
    assert again.folder == parts.folder and again.finished() == {1}
    read_rows, read_vectors = again.read(1)
    assert [r["record"] for r in read_rows] == [3, 4, 5]
    assert read_rows[1]["reason"] == "truncated" and read_rows[0]["width"] == 4
    assert read_vectors.dtype == np.float16 and np.array_equal(read_vectors, vectors.astype(np.float16))
    assert again.fingerprints(1) == {"abc"}


def test_parts_of_another_build_are_discarded(tmp_path):
    old = Parts.open(tmp_path, SIGNATURE)
    old.write(0, 0, [_row("a.jpg", "1")], np.zeros((1, 3)), "abc")
    new = Parts.open(tmp_path, {**SIGNATURE, "model": "other"})
    assert new.finished() == set() and not old.folder.exists()
    new.remove()
    assert not (tmp_path / PARTS).exists()


def test_reduce_marks_duplicates_across_parts_and_drops_their_vectors(tmp_path):
    parts = Parts.open(tmp_path, SIGNATURE)
    parts.write(0, 0, [_row("a.jpg", "1"), _row("b.jpg", "2")], np.array([[1, 0], [0, 1]]), "abc")
    parts.write(1, 2, [_row("c.jpg", "1"), _row("d.jpg", "3")], np.array([[1, 0], [0.6, 0.8]]), "abc")
    counts: Counter = Counter()
    batches = list(_reduced_parts(parts, 2, {1}, counts, "abc"))
    rows, vectors = batches[1]
    assert [r["status"] for r in rows] == ["duplicate", "embedded"]
    assert rows[0]["duplicate_of"] == "a.jpg"
    assert np.allclose(vectors, [[0.6, 0.8]], atol=1e-3)
    assert counts == Counter(duplicate=1, embedded=1)  # only the parts embedded in this run count


def test_reduce_points_every_copy_at_the_first_and_refuses_another_models_part(tmp_path):
    """c.jpg (reused by --update) is a copy of a.jpg in an earlier part, and the part had made d.jpg a duplicate
    of c.jpg: both end up duplicates of a.jpg, as the single build records them."""
    parts = Parts.open(tmp_path, SIGNATURE)
    parts.write(0, 0, [_row("a.jpg", "1")], np.array([[1, 0]]), "abc")
    rows = [_row("c.jpg", "1", "reused"), _row("d.jpg", "1", "duplicate", duplicate_of="c.jpg")]
    parts.write(1, 1, rows, np.array([[1, 0]]), "abc")
    rows, vectors = list(_reduced_parts(parts, 2, {1}, Counter(), "abc"))[1]
    assert [(r["status"], r["duplicate_of"]) for r in rows] == [("duplicate", "a.jpg"), ("duplicate", "a.jpg")]
    assert len(vectors) == 0

    parts.write(1, 1, [_row("c.jpg", "2")], np.array([[0, 1]]), "another model")
    with pytest.raises(BuildError, match="part 1 .* another model"):
        list(_reduced_parts(parts, 2, set(), Counter(), "abc"))
