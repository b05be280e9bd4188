"""Paging, score floors, metadata filters and raw-vector search, each against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from xmodal.indexer import store

pytestmark = pytest.mark.e2e
QUERY = "a person riding a horse"


@pytest.fixture(scope="module")
def exact(client, coco_index_dir):
    """Brute-force scores of QUERY over the stored embeddings, and the items table."""
    version = store.resolve_version(coco_index_dir)
    stored = store.read_vectors(version, store.read_manifest(version).images.embeddings)
    query_emb = np.array(client.post("/v1/embed/text", json={"text": QUERY}).json()["embeddings"][0])
    return stored @ query_emb, store.read_table(version, "items").to_pydict()


def _ids(response):
    assert response.status_code == 200, response.text
    return [hit["id"] for hit in response.json()["results"]]


def test_pages_concatenate_to_the_full_ranking(client, exact):
    scores, _ = exact
    pages = [_ids(client.post("/v1/search/text", json={"text": QUERY, "k": 5, "offset": o})) for o in (0, 5, 10)]
    assert sum(pages, []) == np.argsort(-scores, kind="stable")[:15].tolist()


def test_min_score_keeps_exactly_the_results_above_it(client, exact):
    scores, _ = exact
    ranked = np.sort(scores)[::-1]
    # Midway between the 7th and 8th scores: FAISS scores in float32 and `scores` are float64, so a floor
    # at exactly the 7th score could fall either side of it.
    floor = float(ranked[6] + ranked[7]) / 2
    body = client.post("/v1/search/text", json={"text": QUERY, "k": 50, "min_score": floor}).json()
    assert all(hit["score"] >= floor for hit in body["results"])
    assert len(body["results"]) == int((scores >= floor).sum()) == 7


def test_filters_return_the_best_matching_items_not_a_post_filtered_few(client, exact):
    scores, items = exact
    widths, heights = np.array(items["width"]), np.array(items["height"])
    allowed = np.flatnonzero((widths >= 600) & np.isin(heights, [427, 480]))
    assert 3 < len(allowed) < 100
    filters = {"width": {"gte": 600}, "height": {"in": [427, 480]}}
    got = _ids(client.post("/v1/search/text", json={"text": QUERY, "k": 10, "filters": filters}))
    assert got == allowed[np.argsort(-scores[allowed], kind="stable")][:10].tolist()
    one = items["path"][int(allowed[0])]
    assert _ids(client.post("/v1/search/text", json={"text": QUERY, "filters": {"path": one}})) == [int(allowed[0])]


def test_vector_search_equals_text_search(client):
    vector = client.post("/v1/embed/text", json={"text": QUERY}).json()["embeddings"][0]
    by_vector = _ids(client.post("/v1/search/vector", json={"vector": [v * 3 for v in vector], "k": 8}))
    assert by_vector == _ids(client.post("/v1/search/text", json={"text": QUERY, "k": 8}))
    captions = client.post("/v1/search/vector", json={"vector": vector, "k": 3, "target": "texts"}).json()["results"]
    assert len(captions) == 3 and "text" in captions[0]


@pytest.mark.parametrize(
    "path, body, message",
    [
        ("/v1/search/text", {"text": QUERY, "filters": {"nope": 1}}, "cannot filter on 'nope'"),
        ("/v1/search/text", {"text": QUERY, "filters": {"location": "/etc"}}, "cannot filter on 'location'"),
        ("/v1/search/text", {"text": QUERY, "filters": {"width": {"near": 3}}}, "use a value, or an object"),
        ("/v1/search/text", {"text": QUERY, "filters": {"width": "wide"}}, "does not fit the column's type"),
        ("/v1/search/text", {"text": QUERY, "offset": 10_001}, "offset must be between 0 and 10000"),
        ("/v1/search/text", {"text": QUERY, "offset": -1}, "offset must be between"),
        ("/v1/search/vector", {"vector": [0.1, 0.2]}, "vector must be 32 finite numbers"),
        ("/v1/search/vector", {"vector": [0.0] * 32}, "not all zero"),
    ],
)
def test_bad_search_options_are_422(client, path, body, message):
    response = client.post(path, json=body)
    assert response.status_code == 422 and message in response.json()["detail"], response.text
