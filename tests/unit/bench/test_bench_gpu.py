"""bench/bench_gpu.py --small: the GPU bench's code runs on the CPU, through the indexer's real path."""

import importlib.util
import json

from tests.conftest import ROOT


def _bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "bench_gpu.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_small_run_measures_every_part_and_writes_json(tmp_path):
    out = tmp_path / "gpu.json"
    result = _bench().main(
        ["--small", "--device", "cpu", "--images", "12", "--precisions", "fp32", "bf16", "--out", str(out)]
    )
    assert json.loads(out.read_text())["rows"] == result["rows"]
    assert "(CPU)" in result["hardware"]
    by_part = {}
    for row in result["rows"]:
        by_part.setdefault(row["part"], []).append(row)
        assert row["per_s"] > 0
    assert [len(by_part[part]) for part in ("pipeline", "encode", "text", "caption")] == [2, 2, 2, 2]
    workers, device = by_part["pipeline"]
    assert "device decode" in device["what"] and "12 JPEGs" in device["what"]
    assert device["cosine_min_vs_workers"] > 0.99  # tiny model at 32 px, against draft-scaled Pillow decoding
    assert by_part["encode"][1]["cosine_min_vs_first"] > 0.99  # bf16 against fp32
    assert [row["batch"] for row in by_part["caption"]] == [1, 4]
