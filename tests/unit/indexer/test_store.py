"""Publishing into one index folder: builds that finish together take turns, readers never see half a version."""

from __future__ import annotations

import threading

import pytest

from xmodal.indexer import store
from xmodal.indexer.manifest import Manifest, ModelInfo, VectorIndexInfo


def _manifest(tag: str) -> Manifest:
    model = ModelInfo(spec="tiny", fingerprint="0" * 64, embed_dim=4)
    images = VectorIndexInfo(file="images.faiss", embeddings=[], count=0, index_key="Flat")
    return Manifest(xmodal_version="test", model=model, source=f"/photos/{tag}", images=images)


def _publish(root, tag: str) -> str:
    writer = store.VersionWriter(root)
    (writer.tmp / "payload.txt").write_text(tag)
    return writer.publish(_manifest(tag), keep=1000).name


def test_concurrent_publishers_get_distinct_versions_and_current_names_a_whole_one(tmp_path):
    """Two builds (two hosts, or a cron job and a hand run) publishing at once: without the publish lock they
    picked the same version name (the second rename failed after a whole build) and shared one CURRENT
    pointer file. Meanwhile a reader resolving CURRENT must always find a complete version."""
    published: list[str] = []
    errors: list[BaseException] = []
    done = threading.Event()
    torn: list[str] = []

    def publisher(worker: int) -> None:
        try:
            for i in range(25):
                published.append(_publish(tmp_path, f"{worker}-{i}"))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    def reader() -> None:
        while not done.is_set():
            try:
                version = store.resolve_version(tmp_path)
            except store.IndexNotFound:
                continue  # nothing published yet
            manifest = store.read_manifest(version)
            if (version / "payload.txt").read_text() != manifest.source.rsplit("/", 1)[1]:
                torn.append(version.name)

    threads = [threading.Thread(target=publisher, args=(w,)) for w in range(3)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    watcher.join()

    assert not errors, errors
    assert len(published) == len(set(published)) == 75
    assert sorted(p.name for p in store.list_versions(tmp_path)) == sorted(published)
    assert store.resolve_version(tmp_path).name in published
    assert not torn
    assert not list(tmp_path.glob(".tmp-*")) and not (tmp_path / ".CURRENT.tmp").exists()


def test_pruning_keeps_current_and_the_newest(tmp_path):
    names = [_publish(tmp_path, str(i)) for i in range(5)]
    store.prune_versions(tmp_path, keep=2)
    assert [p.name for p in store.list_versions(tmp_path)] == names[-2:]
    assert store.resolve_version(tmp_path).name == names[-1]


@pytest.mark.parametrize("keep", [0, 1])
def test_pruning_never_removes_the_current_version(tmp_path, keep):
    names = [_publish(tmp_path, str(i)) for i in range(3)]
    (tmp_path / store.CURRENT).write_text(names[0] + "\n")  # a rollback by hand: CURRENT names an old one
    store.prune_versions(tmp_path, keep)
    remaining = [p.name for p in store.list_versions(tmp_path)]
    assert names[0] in remaining and names[-1] in remaining
