"""Building from the memory-mapped float16 shards, a chunk at a time: the same index as from one matrix."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest
from PIL import Image

from tests.unit.indexer.synthetic import clustered_unit_vectors
from xmodal.indexer import faiss_build, store, tuning
from xmodal.indexer.build import BuildConfig, build_index
from xmodal.indexer.faiss_build import add_ranges, build_vector_index
from xmodal.indexer.reader import OpenIndex
from xmodal.indexer.recall import exact_search
from xmodal.indexer.rows import StoredRows
from xmodal.indexer.searcher import Searcher

pytestmark = pytest.mark.usefixtures("one_faiss_thread")
N, DIM, SHARD = 20_000, 64, 7_000


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return clustered_unit_vectors(N, DIM)


def write_shards(folder, vectors, shard_rows, batches=(5_000, 1, 0, 9_999)):
    """Shards of `shard_rows` rows written through a ShardWriter from uneven batches; their names."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store, "SHARD_ROWS", shard_rows)
        writer = store.ShardWriter(folder, "images", vectors.shape[1])
        start = 0
        for size in batches:
            writer.add(vectors[start : start + size])
            start += size
        writer.add(vectors[start:])
        return writer.close()


@pytest.fixture(scope="module")
def mapped(vectors, tmp_path_factory) -> StoredRows:
    folder = tmp_path_factory.mktemp("shards")
    return StoredRows(store.map_vectors(folder, write_shards(folder, vectors, SHARD)), file_reads=True)


def test_shard_writer_writes_the_shards_write_vectors_wrote(vectors, tmp_path):
    names = write_shards(tmp_path, vectors, SHARD)
    assert names == ["images-00000.npy", "images-00001.npy", "images-00002.npy"]
    shards = [np.load(tmp_path / name) for name in names]
    assert [len(s) for s in shards] == [7_000, 7_000, 6_000] and all(s.dtype == np.float16 for s in shards)
    assert np.array_equal(np.concatenate(shards), vectors.astype(np.float16))
    (tmp_path / "exact").mkdir()
    names = write_shards(tmp_path / "exact", vectors[:14_000], SHARD, batches=())
    assert names == ["images-00000.npy", "images-00001.npy"]  # a full last shard: no empty one after it
    empty = store.ShardWriter(tmp_path, "texts", DIM)
    assert empty.close() == ["texts-00000.npy"] and np.load(tmp_path / "texts-00000.npy").shape == (0, DIM)
    with pytest.raises(ValueError, match="expected"):
        store.ShardWriter(tmp_path, "x", DIM).add(vectors[:3, :10])


def test_stored_rows_read_ranges_and_rows_across_shards(vectors, mapped):
    assert (len(mapped), mapped.dim) == (N, DIM)
    for start, stop in [(0, 10), (6_990, 7_010), (0, N), (13_999, 14_001), (N - 1, N), (5, 5)]:
        block = mapped.block(start, stop)
        assert block.dtype == np.float32 and block.flags.c_contiguous and np.array_equal(block, vectors[start:stop])
    ids = np.array([19_999, 0, 7_000, 6_999, 14_000, 3])
    assert np.array_equal(mapped.take(ids), vectors[ids])
    head = mapped.head(7_001)
    assert len(head) == 7_001 and np.array_equal(head.block(6_990, 7_001), vectors[6_990:7_001])
    assert all(mapped.files) and all(head.files)  # read from the files, not through the mapping
    assert np.array_equal(head.take(np.array([7_000, 1])), vectors[[7_000, 1]])
    in_ram = StoredRows([vectors[:10], vectors[10:]], file_reads=True)
    assert in_ram.files == [None, None] and np.array_equal(in_ram.take(np.array([12, 3])), vectors[[12, 3]])
    scores, found = exact_search(mapped, vectors[:5], 10)
    expected_scores, expected_ids = exact_search(vectors, vectors[:5], 10)
    assert np.array_equal(found, expected_ids) and np.array_equal(scores, expected_scores)


def _mapped_file_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    pytest.skip("no RssFile in /proc/self/status")


def test_file_reads_leave_the_shards_out_of_the_resident_set(tmp_path):
    """Reading rows through the mapping maps whole page-cache folios around them, counted in RSS; a
    build reads them from the files instead."""
    np.save(tmp_path / "rows.npy", np.ones((400_000, 64), np.float16))  # 51 MB
    for file_reads in (True, False):
        rows = StoredRows(store.map_vectors(tmp_path, ["rows.npy"]), file_reads=file_reads)
        before = _mapped_file_bytes()
        for start in range(0, len(rows), 32_768):
            rows.block(start, start + 32_768)
        assert np.array_equal(rows.take(np.arange(0, len(rows), 997)), np.ones((402, 64)))
        grown = _mapped_file_bytes() - before
        if file_reads:
            assert grown < 4 * 2**20, grown
        else:
            assert grown > 40 * 2**20, grown  # the whole file, mapped: what file_reads avoids


def test_add_ranges_cut_inside_the_old_100k_chunks():
    ranges = add_ranges(250_000, "ivf_pq")
    assert ranges[:4] == [(0, 32_768), (32_768, 65_536), (65_536, 98_304), (98_304, 100_000)]
    assert (100_000, 132_768) in ranges and ranges[-1] == (232_768, 250_000)
    assert add_ranges(250_000, "hnsw") == [(0, 100_000), (100_000, 200_000), (200_000, 250_000)]
    assert add_ranges(0, "flat") == []


KEYS = ("IVF256,PQ16", "OPQ8_64,IVF256,PQ8")


@pytest.fixture(scope="module")
def builds(vectors, mapped) -> dict:
    """Per key: built from the float32 matrix, and streamed from the mapped shards in small chunks."""
    out = {}
    for key in KEYS:
        in_memory = build_vector_index(vectors, key=key, recall=0.95)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(faiss_build, "ADD_ROWS", 3_000)  # many chunks, some across shard boundaries
            patch.setattr(faiss_build, "ADD_BLOCK", 8_000)
            out[key] = in_memory, build_vector_index(mapped, key=key, recall=0.95)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("key", KEYS)
def test_a_streamed_build_equals_the_build_from_one_matrix(builds, vectors, mapped, key):
    in_memory, streamed = builds[key]
    assert _contents(streamed.index) == _contents(in_memory.index)
    # every recall measured while tuning, in order; which of the settings reaching the target wins is
    # decided by timing them (noise: two builds from the same matrix can differ there too)
    assert streamed.tried == in_memory.tried and streamed.search_params in {t[0] for t in in_memory.tried}
    fresh = clustered_unit_vectors(200, DIM, seed=5)
    params = in_memory.search_params
    expected = Searcher(in_memory.index, params, StoredRows(vectors)).search(fresh, 10)
    got = Searcher(streamed.index, params, mapped).search(fresh, 10)
    assert np.array_equal(got[1], expected[1]) and np.array_equal(got[0], expected[0])


def _contents(index: faiss.Index) -> bytes:
    """The serialized index, at nprobe=1 (tuning leaves the last nprobe it timed set)."""
    faiss.extract_index_ivf(index).nprobe = 1
    return faiss.serialize_index(index).tobytes()


@pytest.mark.slow
def test_the_index_is_the_one_built_by_hand_as_before(builds, vectors):
    """Before streaming: train on vectors[the seed's sample], add every row but the tuning queries, then them."""
    key, indexed = "IVF256,PQ16", N - tuning.held_out_count(N)
    streamed = builds[key][1]
    choice = faiss_build.describe_key(key, N, DIM)
    sample = np.sort(np.random.default_rng(0).choice(indexed, min(choice.train_size, indexed), replace=False))
    by_hand = faiss.index_factory(DIM, key, faiss.METRIC_INNER_PRODUCT)
    faiss.downcast_index(faiss.extract_index_ivf(by_hand)).do_polysemous_training = False
    with faiss_build.blas_for_small_batches():
        by_hand.train(vectors[sample])
    by_hand.add(vectors[:indexed])
    by_hand.add(vectors[indexed:])
    assert _contents(streamed.index) == _contents(by_hand)


def test_a_build_reads_a_chunk_at_a_time(monkeypatch):
    """No read of the rows, by range or by id, asks for all of them at once (n = 100k, 16-d: quick)."""
    n = 100_000
    rows = StoredRows(clustered_unit_vectors(n, 16, clusters=50).astype(np.float16), file_reads=True)
    sizes = []
    block, take = StoredRows.block, StoredRows.take

    def counted_block(self, start, stop):
        sizes.append(stop - start)
        return block(self, start, stop)

    def counted_take(self, ids):
        sizes.append(len(ids))
        return take(self, ids)

    monkeypatch.setattr(StoredRows, "block", counted_block)  # every StoredRows, head() views included
    monkeypatch.setattr(StoredRows, "take", counted_take)
    built = build_vector_index(rows, key="IVF64,Flat", recall=0.9)
    assert built.index.ntotal == n and built.search_params.startswith("nprobe=")
    assert max(sizes) <= faiss_build.ADD_ROWS < n and sum(sizes) > 2 * n  # training sample, adds, ground truth


def test_build_index_writes_shards_batch_by_batch_and_indexes_them(tiny_coca_dir, tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(7):
        Image.fromarray(rng.integers(0, 255, (28, 36, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    captions = "".join(f"{i}.png,photo {i}\n{i}.png,image {i}\n" for i in range(7))
    (photos / "captions.csv").write_text("image,caption\n" + captions)
    monkeypatch.setattr(store, "SHARD_ROWS", 3)
    report = build_index(
        BuildConfig(
            photos,
            tmp_path / "index",
            model=f"local-dir:{tiny_coca_dir}",
            captions=photos / "captions.csv",
            batch_size=2,
            workers=0,
            progress=False,
        )
    )
    opened = OpenIndex(report.version)
    images, texts = opened.manifest.images, opened.manifest.texts
    assert (images.embeddings, images.count) == (["images-00000.npy", "images-00001.npy", "images-00002.npy"], 7)
    assert (len(texts.embeddings), texts.count) == (5, 14)
    for info, index in ((images, opened.image_index), (texts, opened.text_index)):
        stored = store.read_vectors(report.version, info.embeddings)
        assert np.array_equal(index.reconstruct_n(0, info.count), stored)  # the index holds exactly the shards


@pytest.mark.parametrize("key", ["IVF64,Flat", "IVF64,PQ16"])
def test_sized_inverted_lists_give_the_index_a_plain_add_gives(vectors, mapped, key):
    """Lists reserved at their final size before adding (rows first, the held-out rest after): the
    same index, byte for byte, as faiss's own adds."""
    choice = faiss_build.describe_key(key, N, DIM)
    first, rest = 15_000, vectors[15_000:]
    train_ids = np.arange(0, first, 5)
    sized, _ = faiss_build.train_and_add(mapped.head(first), choice, train_ids, size_lists_for=mapped)
    sized.add(rest)
    plain = faiss.index_factory(DIM, key, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(plain))
    if hasattr(ivf, "do_polysemous_training"):
        ivf.do_polysemous_training = False  # as train_and_add does
    plain.train(vectors[train_ids])
    for start in range(0, N, 4_000):
        plain.add(vectors[start : start + 4_000])
    assert sized.ntotal == N
    assert np.array_equal(faiss.serialize_index(sized), faiss.serialize_index(plain))
