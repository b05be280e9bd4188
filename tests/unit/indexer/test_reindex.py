"""`xmodal reindex`: new indexes from the stored embeddings, published as a new version."""

from __future__ import annotations

import subprocess

import faiss
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from tests.unit.indexer.synthetic import clustered_unit_vectors
from xmodal.app.testing import XMODAL
from xmodal.indexer import store
from xmodal.indexer.build import BuildConfig, build_index
from xmodal.indexer.manifest import Manifest, ModelInfo, VectorIndexInfo
from xmodal.indexer.reader import OpenIndex
from xmodal.indexer.recall import RecallBench, exact_search
from xmodal.indexer.reindex import reindex, split_budget
from xmodal.indexer.rows import StoredRows
from xmodal.indexer.searcher import SearchParams

pytestmark = pytest.mark.usefixtures("one_faiss_thread")
N, DIM, TARGET, FRESH_SLACK = 20_000, 64, 0.95, 0.015


def synthetic_bundle(root, vectors):
    """A published Flat version over `vectors`, as `xmodal index` writes one (no model needed)."""
    writer = store.VersionWriter(root)
    index = faiss.index_factory(vectors.shape[1], "Flat", faiss.METRIC_INNER_PRODUCT)
    index.add(vectors)
    shards = writer.write_vectors("images", vectors, index)
    ids = pa.array(range(len(vectors)), pa.int64())
    writer.write_table(
        "items",
        pa.table(
            {
                "id": ids,
                "path": pa.array([f"{i}.png" for i in range(len(vectors))]),
                "location": pa.array([f"/nowhere/{i}.png" for i in range(len(vectors))]),
            }
        ),
    )
    writer.write_table("skipped", pa.table({"path": pa.array([], pa.string()), "reason": pa.array([], pa.string())}))
    manifest = Manifest(
        xmodal_version="test",
        model=ModelInfo(spec="synthetic", fingerprint="0" * 64, embed_dim=vectors.shape[1]),
        source=str(root),
        images=VectorIndexInfo(file="images.faiss", embeddings=shards, count=len(vectors), index_key="Flat"),
    )
    return writer.publish(manifest)


@pytest.fixture(scope="module")
def vectors():
    return clustered_unit_vectors(N, DIM)


@pytest.fixture(scope="module")
def reindexed(vectors, tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    first = synthetic_bundle(root, vectors)
    report = reindex(root, budget_bytes=N * DIM, recall=TARGET)  # a quarter of Flat's bytes: PQ codes
    return root, first, report


@pytest.mark.slow
def test_reindex_publishes_a_new_version_with_the_chosen_index_and_measurements(reindexed):
    root, first, report = reindexed
    assert (root / "CURRENT").read_text().strip() == report.version.name != first.name
    assert [p.name for p in store.list_versions(root)] == [first.name, report.version.name]
    manifest = store.read_manifest(report.version)
    info = manifest.images
    assert manifest.reindexed_from == first.name and "reindex" in manifest.timings_s
    assert info.index_key == report.built["images"].key and "PQ" in info.index_key
    assert SearchParams.parse(info.search_params).rerank > 0
    assert info.measured_recall_at_10 >= TARGET and info.measured_query_ms > 0
    assert info.index_bytes == (report.version / "images.faiss").stat().st_size <= N * DIM
    # everything but the index and the manifest is the old version's, unchanged
    assert store.version_files(report.version) == store.version_files(first)
    for name in store.version_files(first):
        if name not in ("images.faiss", "manifest.json"):
            assert (report.version / name).read_bytes() == (first / name).read_bytes(), name
    old = store.read_manifest(first)
    assert (old.model, old.source, old.images.embeddings) == (manifest.model, manifest.source, info.embeddings)


@pytest.mark.slow
def test_the_reader_searches_at_the_stored_params_and_agrees_with_exact_search(reindexed, vectors):
    root, _, report = reindexed
    opened = OpenIndex(root)
    assert opened.version == report.version
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(opened.image_index).invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists)  # IVF served memory-mapped
    nprobe = int(SearchParams.parse(opened.manifest.images.search_params).faiss.split("=")[1])
    assert faiss.extract_index_ivf(opened.image_index).nprobe == nprobe  # the reader applied the params

    fresh = clustered_unit_vectors(300, DIM, seed=7)
    hits = opened.search_images(fresh, 10)
    exact_scores, _ = exact_search(vectors, fresh, 10)
    found = [sum(score >= exact_scores[q, -1] - 1e-5 for _, score in row) for q, row in enumerate(hits)]
    assert np.mean(found) / 10 >= TARGET - FRESH_SLACK
    for query, row in zip(fresh[:5], hits):  # re-ranked scores are the exact ones
        assert np.allclose([s for _, s in row], vectors[[i for i, _ in row]] @ query, atol=1e-5)
    # with the stored rows memory-mapped and re-ranking off, recall drops: the params matter
    plain = RecallBench(StoredRows(vectors), fresh)
    assert plain.recall(opened._image_searcher) > plain.recall(_without_rerank(opened)) + 0.05


def _without_rerank(opened):
    from xmodal.indexer.searcher import Searcher

    return Searcher(opened.image_index, SearchParams.parse(opened.manifest.images.search_params).faiss)


@pytest.mark.slow
def test_filtered_search_on_a_reindexed_version(reindexed, vectors):
    root, _, _ = reindexed
    opened = OpenIndex(root)
    allowed = np.arange(1, N, 2)
    hits = opened.search_images(vectors[:20:2], 10, allowed)
    assert all(len(row) == 10 and all(i % 2 == 1 for i, _ in row) for row in hits)


def test_forced_key_and_budget_errors(vectors, tmp_path):
    root = tmp_path / "bundle"
    synthetic_bundle(root, vectors)
    report = reindex(root, key="IVF256,Flat", recall=TARGET)
    info = store.read_manifest(report.version).images
    assert (info.index_key, info.search_params.startswith("nprobe=")) == ("IVF256,Flat", True)
    from xmodal.indexer.selection import NoIndexFits

    with pytest.raises(NoIndexFits):
        reindex(root, budget_bytes=1_000)
    assert (root / "CURRENT").read_text().strip() == report.version.name  # a failed reindex publishes nothing
    assert not list(root.glob(".tmp-*"))


def test_split_budget():
    assert split_budget(None, {"images": 10, "texts": 50}) == {"images": None, "texts": None}
    assert split_budget(600, {"images": 10, "texts": 50}) == {"images": 100, "texts": 500}


def _photos(folder, count=6):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (28, 36, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "captions.csv").write_text(
        "image,caption\n" + "".join(f"{i}.png,photo number {i}\n" for i in range(count))
    )
    return folder


def test_xmodal_reindex_command(tmp_path):
    photos = _photos(tmp_path / "photos")
    out = tmp_path / "index"
    built = build_index(
        BuildConfig(photos, out, model="xmodal-tiny-coca", captions=photos / "captions.csv", workers=0, progress=False)
    )
    before = OpenIndex(out)
    queries = store.read_vectors(built.version, before.manifest.images.embeddings)[:3]

    result = subprocess.run(
        [XMODAL, "reindex", str(out), "--budget", "2GB", "--recall", "0.95"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "published" in result.stdout and "images: Flat" in result.stdout and "texts: Flat" in result.stdout
    after = OpenIndex(out)
    assert after.version != built.version and after.manifest.reindexed_from == built.version.name
    assert (after.manifest.images.index_key, after.manifest.images.measured_recall_at_10) == ("Flat", None)
    assert after.manifest.texts.count == before.manifest.texts.count == 6
    assert after.search_images(queries, 4) == before.search_images(queries, 4)
    assert after.item_rows([0, 5]) == before.item_rows([0, 5])

    refused = subprocess.run(
        [XMODAL, "reindex", str(out), "--budget", "1KB"], capture_output=True, text=True, timeout=300
    )  # each `xmodal` start costs seconds (torch): one refusal is enough here
    assert refused.returncode == 2 and "fits in" in refused.stderr, refused.stderr
    assert OpenIndex(out).version == after.version
