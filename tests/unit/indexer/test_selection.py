"""The index selector: a pure function of (n, dim, budget, targets), no faiss."""

from __future__ import annotations

import subprocess
import sys

import pytest

from xmodal.indexer.selection import (
    NoIndexFits,
    choose_index_key,
    choose_index_keys,
    estimate_bytes,
    ivf_lists,
    parse_bytes,
)

GiB, MB = 2**30, 10**6


@pytest.mark.parametrize(
    "n, dim, budget, targets, first, kinds",
    [
        (3, 32, None, {}, "Flat", ["flat"]),  # what `xmodal index` builds today
        (9_999, 512, None, {}, "Flat", ["flat"]),  # small: exact only, whatever the latency
        (20_000, 64, None, {}, "Flat", ["flat", "hnsw", "ivf_flat", "ivf_pq", "opq_ivf_pq"]),  # exact is fast enough
        (50_000, 512, None, {}, "Flat", None),  # 6.4 ms an exact query, under the 10 ms target
        (200_000, 512, None, {}, "HNSW32,Flat", ["hnsw", "ivf_flat", "ivf_pq", "opq_ivf_pq", "flat"]),  # 26 ms exact
        (200_000, 512, None, {"latency_ms": None}, "Flat", None),  # no latency target: exact
        (1_000_000, 512, 4 * GiB, {}, "HNSW32,Flat", None),
        (1_000_000, 512, 2 * GiB, {}, "IVF2048,Flat", ["ivf_flat", "ivf_pq", "opq_ivf_pq", "flat"]),  # HNSW: 2.2 GiB
        (1_000_000, 512, 2_000 * MB, {}, "IVF2048,PQ128", ["ivf_pq", "opq_ivf_pq"]),  # 4 dims a code: plain PQ
        (1_000_000, 512, 100 * MB, {}, "OPQ64_512,IVF2048,PQ64", ["opq_ivf_pq", "ivf_pq"]),  # 8 dims a code: OPQ
        (1_000_000, 512, 30 * MB, {}, "OPQ16_128,IVF2048,PQ16", ["opq_ivf_pq", "ivf_pq"]),
        (1_000_000, 512, None, {"recall": 1.0}, "Flat", ["flat"]),  # only exact search guarantees recall 1
        (100_000, 64, None, {"latency_ms": 0.1}, "HNSW32,Flat", None),
    ],
)
def test_selector_choices(n, dim, budget, targets, first, kinds):
    choices = choose_index_keys(n, dim, budget, **targets)
    assert choices[0].key == first == choose_index_key(n, dim, budget, **targets)
    if kinds is not None:
        assert [c.kind for c in choices] == kinds
    for choice in choices:
        assert budget is None or choice.memory_bytes <= budget
        assert choice.memory_bytes == estimate_bytes(choice.key, n, dim)
        assert choice.train_size <= n
        assert choice.mmap == ("IVF" in choice.key) and choice.rerank == ("PQ" in choice.key)
        assert choice.exact == (choice.key == "Flat")


def test_a_budget_nothing_fits_in_is_a_typed_error():
    with pytest.raises(NoIndexFits, match=r"1,000,000 vectors of dimension 512 fits in 4\.8 MiB.*needs") as caught:
        choose_index_keys(1_000_000, 512, 5 * MB)
    assert caught.value.smallest.kind in {"ivf_pq", "opq_ivf_pq"} and caught.value.smallest.memory_bytes > 5 * MB
    with pytest.raises(NoIndexFits):  # small sets are only ever exact
        choose_index_keys(5_000, 512, 1 * MB)
    with pytest.raises(NoIndexFits):  # recall 1.0 needs exact search, which needs 2 GB
        choose_index_keys(1_000_000, 512, GiB, recall=1.0)
    assert isinstance(caught.value, ValueError)


def test_the_largest_code_that_fits_is_chosen():
    sizes = [
        int(c.key.rsplit("PQ", 1)[1])
        for c in (choose_index_keys(1_000_000, 512, budget)[0] for budget in (20 * MB, 40 * MB, 80 * MB, 150 * MB))
    ]
    assert sizes == sorted(sizes) and len(set(sizes)) == 4


def test_ivf_lists_grow_with_sqrt_n_and_keep_39_training_points_a_list():
    assert [ivf_lists(n) for n in (10_000, 20_000, 100_000, 1_000_000, 10_000_000)] == [256, 256, 512, 2048, 8192]
    for n in (10_000, 12_345, 1_000_000):
        assert n // ivf_lists(n) >= 39


def test_bad_arguments():
    with pytest.raises(ValueError):
        choose_index_keys(0, 512)
    with pytest.raises(ValueError):
        choose_index_keys(100, 512, recall=1.5)
    with pytest.raises(ValueError, match="no size estimate"):
        estimate_bytes("LSH", 100, 64)


@pytest.mark.parametrize(
    "text, size",
    [
        ("2GB", 2_000_000_000),
        ("512MiB", 512 * 2**20),
        ("1.5G", 1_500_000_000),
        ("1000", 1000),
        ("64 kib", 65536),
        ("3TiB", 3 * 2**40),
        ("10B", 10),
    ],
)
def test_parse_bytes(text, size):
    assert parse_bytes(text) == size


@pytest.mark.parametrize("text", ["", "lots", "2 parsecs", "-1GB", "0", "GB"])
def test_parse_bytes_refuses_what_is_not_a_size(text):
    with pytest.raises(ValueError):
        parse_bytes(text)


def test_selection_does_not_import_faiss():
    code = "import sys, indexer.selection; assert 'faiss' not in sys.modules and 'numpy' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
