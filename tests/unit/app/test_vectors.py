"""Near-duplicate removal over ranked unit vectors (search `dedup`)."""

from __future__ import annotations

import numpy as np

from xmodal.app.vectors import dedup


def _unit(*rows):
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_a_vector_close_to_a_kept_higher_ranked_one_is_dropped():
    vectors = _unit([1, 0, 0], [1, 0.01, 0], [0, 1, 0], [0, 1, 0.01], [0, 0, 1])
    assert dedup(vectors, 0.99) == [0, 2, 4]
    assert dedup(vectors, 1.0) == [0, 1, 2, 3, 4]  # only exact duplicates would go


def test_comparison_is_with_kept_vectors_only_and_the_threshold_is_inclusive():
    a, b = _unit([1, 0], [np.cos(0.3), np.sin(0.3)])[0], None
    c = np.array([np.cos(0.6), np.sin(0.6)], dtype=np.float32)
    b = np.array([np.cos(0.3), np.sin(0.3)], dtype=np.float32)
    threshold = float(a @ b)
    # b goes (too close to a); c is as close to b as b to a, but b was not kept, and c is far from a
    assert dedup(np.stack([a, b, c]), threshold) == [0, 2]
    assert dedup(np.zeros((0, 3), dtype=np.float32), 0.9) == []
