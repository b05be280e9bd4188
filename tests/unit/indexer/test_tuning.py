"""Building and tuning the chosen index: recall targets met on held-out queries, parameters applied."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from tests.unit.indexer.synthetic import clustered_unit_vectors
from xmodal.indexer import faiss_build, tuning
from xmodal.indexer.faiss_build import build_vector_index
from xmodal.indexer.recall import RecallBench, exact_search
from xmodal.indexer.rows import StoredRows
from xmodal.indexer.searcher import Searcher, SearchParams, apply_search_params, read_flags
from xmodal.indexer.selection import IndexChoice, NoIndexFits, estimate_bytes
from xmodal.indexer.tuning import RecallNotReached

N, DIM, TARGET = 20_000, 64, 0.95
# The target is met on the tuning queries (the last rows, held out of the index while tuning); fresh
# queries from the same distribution are a second sample: allow them its sampling error.
FRESH_SLACK = 0.015
pytestmark = pytest.mark.usefixtures("one_faiss_thread")


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return clustered_unit_vectors(N, DIM)


@pytest.fixture(scope="module")
def fresh_queries() -> np.ndarray:
    return clustered_unit_vectors(500, DIM, seed=99)


def fresh_recall(searcher: Searcher, vectors: np.ndarray, queries: np.ndarray) -> float:
    return RecallBench(StoredRows(vectors), queries).recall(searcher)


@pytest.fixture(scope="module")
def built(vectors) -> dict:
    return {
        key: build_vector_index(vectors, key=key, recall=TARGET)
        for key in ("IVF256,Flat", "HNSW32,Flat", "IVF256,PQ16", "OPQ8_64,IVF256,PQ8")
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "key, knob",
    [
        ("IVF256,Flat", "nprobe"),
        ("HNSW32,Flat", "efSearch"),
        ("IVF256,PQ16", "nprobe"),
        ("OPQ8_64,IVF256,PQ8", "nprobe"),
    ],
)
def test_tuned_indexes_reach_the_recall_target_on_fresh_queries(built, vectors, fresh_queries, key, knob):
    result = built[key]
    params = SearchParams.parse(result.search_params)
    assert params.faiss.startswith(f"{knob}=") and (params.rerank > 0) == ("PQ" in key)
    assert result.measured_recall_at_10 >= TARGET and result.measured_query_ms > 0
    assert result.index.ntotal == N
    rows = StoredRows(vectors)
    searcher = Searcher(result.index, result.search_params, rows)
    assert fresh_recall(searcher, vectors, fresh_queries) >= TARGET - FRESH_SLACK
    # the tuned setting is the cheapest whose recall reaches the target with confidence: its lower bound
    # reaches it, and one step down the bound misses it
    bounds = {setting: bound for setting, _, bound in result.tried}
    assert bounds[result.search_params] >= TARGET
    if knob == "nprobe" and int(params.faiss.split("=")[1]) > 1:
        lower = tuning.probe_ladder(256)
        cheaper = lower[lower.index(int(params.faiss.split("=")[1])) - 1]
        assert bounds.get(str(SearchParams(f"nprobe={cheaper}", params.rerank)), 0.0) < TARGET


@pytest.mark.slow
def test_size_estimates_match_the_written_indexes(built):
    for key, result in built.items():
        actual = faiss.serialize_index(result.index).nbytes
        assert abs(estimate_bytes(key, N, DIM) - actual) / actual < 0.06, key


def test_small_sets_stay_exact_flat_and_untuned(vectors):
    result = build_vector_index(vectors[:5000])
    assert (result.key, result.search_params, result.measured_recall_at_10) == ("Flat", "", None)
    scores, ids = result.index.search(vectors[:3], 5)
    exact_scores, exact_ids = exact_search(vectors[:5000], vectors[:3], 5)
    assert np.array_equal(ids, exact_ids) and np.allclose(scores, exact_scores, atol=1e-5)


@pytest.mark.slow
def test_a_budget_picks_compressed_codes_that_still_reach_the_target(vectors, fresh_queries):
    flat_bytes = N * DIM * 4
    result = build_vector_index(vectors, budget_bytes=flat_bytes // 4, recall=TARGET)
    assert result.choice.kind in {"ivf_pq", "opq_ivf_pq"} and result.choice.memory_bytes <= flat_bytes // 4
    assert faiss.serialize_index(result.index).nbytes <= flat_bytes // 4
    assert "rerank=" in result.search_params and result.measured_recall_at_10 >= TARGET
    searcher = Searcher(result.index, result.search_params, StoredRows(vectors))
    assert fresh_recall(searcher, vectors, fresh_queries) >= TARGET - FRESH_SLACK
    with pytest.raises(NoIndexFits):
        build_vector_index(vectors, budget_bytes=10_000)


@pytest.mark.slow
def test_a_candidate_that_misses_the_target_gives_way_to_the_next(vectors, monkeypatch):
    ivf_pq = IndexChoice("IVF256,PQ8", "ivf_pq", 0, 20_000, False, True, True, "test")
    ivf_flat = IndexChoice("IVF256,Flat", "ivf_flat", 0, 12_800, False, True, False, "test")
    monkeypatch.setattr(faiss_build, "choose_index_keys", lambda *args, **kwargs: [ivf_pq, ivf_flat])
    monkeypatch.setattr(tuning, "RERANK_FACTORS", (0,))  # PQ8 codes alone stop far below 0.95
    result = build_vector_index(vectors, recall=TARGET)
    assert result.key == "IVF256,Flat" and len(result.rejected) == 1 and "IVF256,PQ8" in result.rejected[0]
    monkeypatch.setattr(faiss_build, "choose_index_keys", lambda *args, **kwargs: [ivf_pq])
    with pytest.raises(RecallNotReached, match="IVF256,PQ8 reaches recall@10 0"):
        build_vector_index(vectors, recall=TARGET)


def test_search_params_parse_apply_and_print():
    params = SearchParams.parse("nprobe=12,rerank=4")
    assert (params.faiss, params.rerank, str(params)) == ("nprobe=12", 4, "nprobe=12,rerank=4")
    assert str(SearchParams.parse("")) == "" and SearchParams.parse(None) == SearchParams()
    index = faiss.index_factory(DIM, "IVF16,Flat", faiss.METRIC_INNER_PRODUCT)
    assert apply_search_params(index, "nprobe=7").rerank == 0 and faiss.extract_index_ivf(index).nprobe == 7
    hnsw = faiss.index_factory(DIM, "HNSW32,Flat", faiss.METRIC_INNER_PRODUCT)
    apply_search_params(hnsw, "efSearch=77")
    assert faiss.downcast_index(hnsw).hnsw.efSearch == 77
    with pytest.raises(ValueError, match="stored vectors"):
        Searcher(index, "nprobe=2,rerank=4")
    with pytest.raises(ValueError):
        SearchParams.parse("rerank=-1")


@pytest.mark.slow
def test_filtered_search_keeps_the_tuned_parameters(built, vectors):
    """faiss's IVF search with an ID selector takes nprobe from the parameters object (default 1)."""
    result = built["IVF256,Flat"]
    searcher = Searcher(result.index, result.search_params)
    allowed = np.arange(0, N, 3)
    queries = vectors[1:301:3]  # rows outside `allowed`
    _, ids = searcher.search(queries, 10, allowed)
    assert np.all(np.isin(ids, allowed))
    _, exact_ids = exact_search(vectors[allowed], queries, 10)
    recall = np.mean([len(set(a) & set(allowed[e])) / 10 for a, e in zip(ids, exact_ids)])
    assert recall >= TARGET - FRESH_SLACK
    one_probe = Searcher(result.index, "nprobe=1")
    _, ids_one = one_probe.search(queries, 10, allowed)
    assert np.mean([len(set(a) & set(allowed[e])) / 10 for a, e in zip(ids_one, exact_ids)]) < recall


@pytest.mark.slow
def test_ivf_indexes_are_memory_mapped_read_only(built, vectors, tmp_path):
    path = tmp_path / "ivf.faiss"
    faiss.write_index(built["IVF256,PQ16"].index, str(path))
    path.chmod(0o444)
    mapped = faiss.read_index(str(path), read_flags("IVF256,PQ16"))
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(mapped).invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists)
    assert read_flags("HNSW32,Flat") == read_flags("Flat") == 0
    params = built["IVF256,PQ16"].search_params
    expected = Searcher(built["IVF256,PQ16"].index, params, StoredRows(vectors)).search(vectors[:20], 10)
    got = Searcher(mapped, params, StoredRows(vectors)).search(vectors[:20], 10)
    assert np.array_equal(expected[1], got[1])


def test_exact_search_and_recall_count_ties_as_hits():
    vectors = np.repeat(clustered_unit_vectors(50, 16), 3, axis=0)  # every vector three times
    scores, ids = exact_search(vectors, vectors[:4], 7)
    assert scores.shape == (4, 7) and np.all(np.diff(scores, axis=1) <= 1e-6)
    flat = faiss.IndexFlatIP(16)
    flat.add(vectors[::-1].copy())  # same vectors, other ids: ties broken differently
    reversed_ids = Searcher(_Relabel(flat, len(vectors)))
    bench = RecallBench(StoredRows(vectors), vectors[:30])
    assert bench.recall(reversed_ids) == 1.0
    assert bench.recall(Searcher(flat)) < 1.0  # the reversed index's own ids are other rows


class _Relabel:
    """A flat index over the reversed vectors, answering with the original ids."""

    def __init__(self, index, n):
        self.index, self.n, self.ntotal = index, n, n

    def search(self, queries, k, params=None):
        scores, ids = self.index.search(queries, k)
        return scores, np.where(ids >= 0, self.n - 1 - ids, -1)


def test_the_recall_bound_sits_below_the_mean_by_the_spread_over_queries(vectors):
    rows = StoredRows(vectors[:2000])
    queries = vectors[2000:2400]
    bench = RecallBench(rows, queries)
    exact = faiss.IndexFlatIP(DIM)
    exact.add(vectors[:2000])
    assert bench.recall_bound(Searcher(exact)) == (1.0, 1.0)  # every query perfect: no spread
    coarse = faiss.index_factory(DIM, "IVF32,Flat", faiss.METRIC_INNER_PRODUCT)
    coarse.train(vectors[:2000])
    coarse.add(vectors[:2000])
    mean, bound = bench.recall_bound(Searcher(coarse, "nprobe=1"))
    per_query = bench._per_query(Searcher(coarse, "nprobe=1"))
    assert mean == bench.recall(Searcher(coarse, "nprobe=1")) < 1.0
    assert bound == pytest.approx(mean - 1.645 * per_query.std(ddof=1) / np.sqrt(len(queries)))


@pytest.mark.slow
def test_shallower_re_ranking_searches_only_from_the_deepest_ones_lists_to_twice_them(built):
    tried = [(SearchParams.parse(setting), bound) for setting, _, bound in built["IVF256,PQ16"].tried]

    def nprobe(params: SearchParams) -> int:
        return int(params.faiss.split("=")[1])

    deepest = max(tuning.RERANK_FACTORS)
    assert tried[0][0].rerank == deepest
    fewest = min(nprobe(params) for params, bound in tried if params.rerank == deepest and bound >= TARGET)
    shallower = [nprobe(params) for params, _ in tried if params.rerank < deepest]
    assert shallower and all(fewest <= p <= tuning.MORE_LISTS * fewest for p in shallower)
