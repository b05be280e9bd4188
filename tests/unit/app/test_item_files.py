"""/v1/items/{id}/image serves a file only while it is the one indexed (issue #13): not a symlink swapped in,
not a file changed since, and it hashes a verified file once, not on every request."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from xmodal.app.item_files import ItemFileError, ItemFiles, check_member
from xmodal.indexer.build import BuildConfig, build_index
from xmodal.indexer.reader import OpenIndex
from xmodal.models.encoders import Encoder


@pytest.fixture(scope="module")
def encoder(tiny_clip_dir):
    return Encoder.from_spec(f"local-dir:{tiny_clip_dir}", "cpu")


@pytest.fixture
def indexed(encoder, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.new("RGB", (32, 32), (100 * i, 30, 200)).save(photos / f"{i}.png")
    (tmp_path / "secret.png").write_bytes(b"not indexed")
    build_index(BuildConfig(photos, tmp_path / "index", workers=0, progress=False), encoder)
    return OpenIndex(tmp_path / "index"), photos


def _read(files: ItemFiles, index: OpenIndex, item_id: int) -> bytes | str:
    return files.item_bytes(index, item_id)


def test_an_unknown_id_or_a_file_moved_before_the_lookup_is_404(indexed):
    index, photos = indexed
    for item_id in (7, 1):
        if item_id == 1:
            (photos / "1.png").unlink()
        with pytest.raises(ItemFileError) as caught:
            _read(ItemFiles(), index, item_id)
        assert caught.value.status == 404 and f"no image file for item {item_id}" in caught.value.detail


def test_the_indexed_file_is_served_and_hashed_once(indexed):
    index, photos = indexed
    files = ItemFiles()
    assert _read(files, index, 0) == (photos / "0.png").read_bytes()
    assert _read(files, index, 0) == (photos / "0.png").read_bytes() and files.hashed == 1


def test_a_symlink_out_of_the_indexed_folder_is_409(indexed):
    index, photos = indexed
    os.remove(photos / "0.png")
    os.symlink(photos.parent / "secret.png", photos / "0.png")
    with pytest.raises(ItemFileError) as caught:
        _read(ItemFiles(), index, 0)
    assert caught.value.status == 409 and "out of the indexed folder" in caught.value.detail


def test_a_symlink_to_another_indexed_file_or_changed_bytes_is_409(indexed):
    index, photos = indexed
    files = ItemFiles()
    _read(files, index, 1)  # verified and remembered: a later change must still be seen
    os.remove(photos / "0.png")
    os.symlink(photos / "1.png", photos / "0.png")
    with pytest.raises(ItemFileError) as inside:
        _read(files, index, 0)
    data = (photos / "1.png").read_bytes()
    (photos / "1.png").write_bytes(bytes([data[0] ^ 1]) + data[1:])  # same size, other bytes
    with pytest.raises(ItemFileError) as changed:
        _read(files, index, 1)
    assert inside.value.status == changed.value.status == 409 and "changed" in changed.value.detail


def test_a_file_gone_after_the_lookup_is_404(indexed):
    index, photos = indexed
    path = index.item_content(0)
    os.remove(photos / "0.png")
    with pytest.raises(ItemFileError) as caught:
        ItemFiles().read(index, 0, path)
    assert caught.value.status == 404


def test_tar_members_are_checked_against_their_hash(indexed):
    index, photos = indexed
    data = (photos / "0.png").read_bytes()
    assert check_member(index, 0, data) == data
    with pytest.raises(ItemFileError):
        check_member(index, 0, data + b"x")
