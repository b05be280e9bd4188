"""Runtime.load with several indexes: one model per distinct spec, and a refusal naming the index whose
manifest does not match the weights it would be searched with."""

from __future__ import annotations

import pytest
from PIL import Image

from xmodal.app.runtime import IndexModelMismatch, Runtime
from xmodal.app.settings import Settings
from xmodal.indexer.build import BuildConfig, build_index
from xmodal.models.encoders import Encoder


@pytest.fixture(scope="module")
def folders(tiny_coca_dir, tiny_clip_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("runtime")
    photos = root / "photos"
    photos.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32), (80 * i, 30, 200)).save(photos / f"{i}.png")
    coca = Encoder.from_spec(f"local-dir:{tiny_coca_dir}", "cpu")
    for name, encoder in (
        ("one", coca),
        ("two", coca),
        ("clip", Encoder.from_spec(f"local-dir:{tiny_clip_dir}", "cpu")),
    ):
        build_index(BuildConfig(photos, root / name, workers=0, progress=False), encoder)
    return root


def test_indexes_with_the_same_model_share_one_loaded_model(folders):
    runtime = Runtime(Settings(index={name: folders / name for name in ("one", "clip", "two")}, device="cpu"))
    try:
        runtime.load()
        assert list(runtime.indexes) == ["one", "clip", "two"] and runtime.ready
        assert len(runtime.models) == 2
        assert runtime.indexes["one"].model is runtime.indexes["two"].model
        assert runtime.indexes["one"].model.index_names == ["one", "two"]
    finally:
        runtime.close()


def test_an_index_whose_manifest_does_not_match_its_weights_is_refused(folders, tiny_coca_dir):
    settings = Settings(
        index={"one": folders / "one", "clip": folders / "clip"},
        device="cpu",
        model={"clip": f"local-dir:{tiny_coca_dir}"},
    )
    runtime = Runtime(settings)
    try:
        with pytest.raises(IndexModelMismatch, match="index clip: .*was built with .*meaningless"):
            runtime.load()
        assert not runtime.ready  # nothing is served unless every index loads
    finally:
        runtime.close()
