import numpy as np
import pytest

from tests.conftest import COCO_MINI, EDGE_UNDECODABLE, FLICKR_1K, IMAGES_EDGE, requires_data
from xmodal.indexer import store
from xmodal.indexer.build import BuildConfig, BuildError, build_index
from xmodal.indexer.reader import OpenIndex
from xmodal.models.encoders import Encoder


@pytest.fixture(scope="module")
def encoder(tiny_coca_dir) -> Encoder:
    return Encoder.from_spec(f"local-dir:{tiny_coca_dir}", "cpu")


@pytest.fixture(scope="module")
def coco_index(encoder, tmp_path_factory):
    out = tmp_path_factory.mktemp("coco-index")
    config = BuildConfig(COCO_MINI, out, captions=COCO_MINI / "captions.csv", workers=1, progress=False)
    return build_index(config, encoder), out


@requires_data(COCO_MINI)
def test_coco_mini_bundle_is_complete_and_self_describing(coco_index, encoder):
    report, out = coco_index
    assert (report.indexed, len(report.skipped), report.texts) == (159, 0, 795)
    assert (out / "CURRENT").read_text().strip() == report.version.name
    manifest = store.read_manifest(report.version)
    assert manifest.model.spec == encoder.spec and manifest.model.fingerprint == encoder.fingerprint
    assert (manifest.images.count, manifest.texts.count, manifest.model.embed_dim) == (159, 795, 32)
    assert manifest.metric == "ip" and manifest.normalized and manifest.source == str(COCO_MINI.resolve())

    items = store.read_table(report.version, "items").to_pylist()
    assert [row["id"] for row in items] == list(range(159))
    first = items[0]
    assert first["path"].startswith("images/") and len(first["sha256"]) == 64
    assert first["width"] > 0 and len(first["captions"]) == 5

    shards = store.read_vectors(report.version, manifest.images.embeddings)
    assert np.load(report.version / manifest.images.embeddings[0]).dtype == np.float16
    assert np.allclose(np.linalg.norm(shards, axis=1), 1, atol=2e-3)
    faiss_vectors = store.read_index(report.version, "images").reconstruct_n(0, 159)
    assert np.array_equal(faiss_vectors, shards)  # the index holds exactly the stored vectors


@requires_data(COCO_MINI)
def test_flat_top_k_equals_brute_force_over_stored_embeddings(coco_index, encoder):
    report, _ = coco_index
    index = OpenIndex(report.version)
    stored = store.read_vectors(report.version, index.manifest.images.embeddings)
    queries = encoder.encode_texts(["a dog on a couch", "a plane in the sky", "pizza", "a red bus", "surfing"])
    for query, hits in zip(queries, index.search_images(queries, k=10)):
        exact = stored @ query
        order = np.argsort(-exact, kind="stable")[:10]
        assert [item_id for item_id, _ in hits] == order.tolist()
        assert np.allclose([score for _, score in hits], exact[order], atol=1e-5)


@requires_data(COCO_MINI)
def test_captions_make_a_text_index_linked_to_images(coco_index, encoder):
    report, _ = coco_index
    index = OpenIndex(report.version)
    caption = index.item(7)["captions"][0]
    hits = index.search_texts(encoder.encode_texts([caption]), k=1)[0]
    text_row = index.text_rows([hits[0][0]])[0]
    assert text_row["text"] == caption and text_row["image_id"] == 7
    assert hits[0][1] > 0.99


@requires_data(IMAGES_EDGE)
@pytest.mark.parametrize("gpu_decode", [False, True], ids=["workers-decode", "device-decode"])
def test_edge_files_are_indexed_or_skipped_with_reasons(encoder, tmp_path, gpu_decode):
    """Also with the batched JPEG decoder (on the CPU here, the code CUDA runs): same items, same skips."""
    config = BuildConfig(IMAGES_EDGE, tmp_path, workers=0, progress=False, gpu_decode=gpu_decode)
    report = build_index(config, encoder)
    assert report.ignored == ["sgi_crash.bin"]  # not an image by suffix: never opened
    expected_skips = {name: why for name, why in EDGE_UNDECODABLE.items() if name not in report.ignored}
    assert set(report.skipped) == set(expected_skips)
    for name, reason in report.skipped.items():
        assert expected_skips[name] in reason
    assert report.indexed == len(list(IMAGES_EDGE.iterdir())) - len(EDGE_UNDECODABLE)
    manifest = store.read_manifest(report.version)
    assert (manifest.skipped.total, manifest.ignored_files) == (len(expected_skips), 1)
    skipped = store.read_table(report.version, "skipped").to_pydict()
    assert sorted(skipped["path"]) == sorted(expected_skips)


def _small_folder(tmp_path, count=3):
    from PIL import Image

    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", (40 + i, 30), (40 * i, 100, 200)).save(folder / ("nested" if i % 2 else ".") / f"p{i}.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"hidden files are left out")
    return folder


def test_versions_publish_atomically_and_old_ones_are_pruned(encoder, tmp_path):
    folder, out = _small_folder(tmp_path), tmp_path / "index"
    first = build_index(BuildConfig(folder, out, workers=0, progress=False, keep_versions=2), encoder)
    assert first.indexed == 3 and first.version.name.startswith("v0001-")
    assert (first.ignored, first.skipped) == (["notes.txt"], {})
    second = build_index(BuildConfig(folder, out, workers=0, progress=False, keep_versions=2), encoder)
    third = build_index(BuildConfig(folder, out, workers=0, progress=False, keep_versions=2), encoder)
    assert (out / "CURRENT").read_text().strip() == third.version.name
    assert [p.name for p in store.list_versions(out)] == [second.version.name, third.version.name]
    assert not list(out.glob(".tmp-*"))


class _FailingEncoder:
    """A real encoder that dies on its second batch, as a crash mid-build would."""

    def __init__(self, encoder):
        self.inner, self.calls = encoder, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode_images(self, pixels):
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("simulated crash")
        return self.inner.encode_images(pixels)


def test_a_crash_mid_build_leaves_the_published_index_untouched(encoder, tmp_path):
    folder, out = _small_folder(tmp_path, count=4), tmp_path / "index"
    good = build_index(BuildConfig(folder, out, workers=0, progress=False), encoder)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_index(BuildConfig(folder, out, batch_size=2, workers=0, progress=False), _FailingEncoder(encoder))
    assert (out / "CURRENT").read_text().strip() == good.version.name
    assert [p.name for p in store.list_versions(out)] == [good.version.name]
    assert OpenIndex(out).manifest.images.count == 4


def test_nothing_to_index_is_an_error_not_an_empty_index(encoder, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BuildError, match="no image files"):
        build_index(BuildConfig(tmp_path / "empty", tmp_path / "out", workers=0, progress=False), encoder)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"not really a png")
    with pytest.raises(BuildError, match="could be decoded"):
        build_index(BuildConfig(tmp_path / "bad", tmp_path / "out", workers=0, progress=False), encoder)
    assert not (tmp_path / "out" / "CURRENT").exists()


def test_captions_csv_needs_image_and_caption_columns(encoder, tmp_path):
    folder = _small_folder(tmp_path)
    bad_csv = tmp_path / "captions.csv"
    bad_csv.write_text("file,text\np0.png,hello\n")
    with pytest.raises(ValueError, match="image,caption"):
        build_index(BuildConfig(folder, tmp_path / "out", captions=bad_csv, workers=0, progress=False), encoder)


def test_an_index_over_the_memory_budget_fails_before_publishing_and_the_rerun_resumes(encoder, tmp_path):
    from xmodal.indexer.selection import NoIndexFits

    folder, out = _small_folder(tmp_path, count=4), tmp_path / "index"
    with pytest.raises(NoIndexFits, match="fits in 100 B"):
        build_index(BuildConfig(folder, out, batch_size=2, workers=0, progress=False, budget_bytes=100), encoder)
    assert not (out / "CURRENT").exists() and not list(out.glob(".tmp-*"))
    fits = build_index(BuildConfig(folder, out, batch_size=2, workers=0, progress=False, budget_bytes=10_000), encoder)
    assert fits.resumed_batches == 2 and fits.embedded == 0  # the journal kept the embedded batches
    info = store.read_manifest(fits.version).images
    assert (info.index_key, info.search_params, info.measured_recall_at_10) == ("Flat", "", None)
    assert info.index_bytes == (fits.version / "images.faiss").stat().st_size
    assert fits.indexes == {"images": "Flat (exact)"}


def test_items_record_the_files_size_also_when_decoded_in_draft_mode(encoder, tmp_path):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (1600, 1200), (30, 120, 200)).save(folder / "big.jpg", quality=90)
    report = build_index(BuildConfig(folder, tmp_path / "index", workers=0, progress=False, draft=True), encoder)
    item = OpenIndex(report.version).item_rows([0])[0]
    assert (item["width"], item["height"]) == (1600, 1200)


@requires_data(COCO_MINI)
def test_int8_images_build_records_it_and_stays_close_to_fp32(encoder, tiny_coca_dir, tmp_path):
    folder = _small_folder(tmp_path)
    fp32 = build_index(BuildConfig(folder, tmp_path / "fp32", workers=0, progress=False), encoder)
    config = BuildConfig(
        folder,
        tmp_path / "int8",
        model=f"local-dir:{tiny_coca_dir}",
        device="cpu",
        workers=0,
        progress=False,
        int8_images=True,
    )
    int8 = build_index(config)  # the encoder comes from the config: --int8-images end to end
    vectors = {}
    for name, report in (("fp32", fp32), ("int8", int8)):
        manifest = OpenIndex(report.version).manifest
        assert manifest.image_weights == name
        vectors[name] = store.read_vectors(report.version, manifest.images.embeddings).astype(np.float32)
    cosines = (vectors["fp32"] * vectors["int8"]).sum(axis=1)
    assert cosines.min() > 0.99 and not np.allclose(vectors["fp32"], vectors["int8"], atol=1e-4)


@requires_data(FLICKR_1K)
def test_device_decoded_vectors_match_the_worker_decoded_ones(encoder, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted((FLICKR_1K / "images").glob("*.jpg"))[:24]:
        (photos / path.name).symlink_to(path)
    versions = {}
    for gpu_decode in (False, True):  # draft off: the device decoder always decodes at full size
        config = BuildConfig(
            photos, tmp_path / f"out-{gpu_decode}", workers=1, progress=False, draft=False, gpu_decode=gpu_decode
        )
        versions[gpu_decode] = OpenIndex(build_index(config, encoder).version)
    workers, device = (versions[flag] for flag in (False, True))
    assert device.items.column("path").to_pylist() == workers.items.column("path").to_pylist()
    assert device.items.column("width").to_pylist() == workers.items.column("width").to_pylist()
    cosine = (_vectors(workers) * _vectors(device)).sum(axis=1)
    assert cosine.min() >= 0.999  # float16 storage included; the decode itself: tests/unit/models/test_device_images.py


def _vectors(index: OpenIndex) -> np.ndarray:
    return store.read_vectors(index.version, index.manifest.images.embeddings).astype(np.float32)
