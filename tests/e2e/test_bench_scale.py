"""bench/bench_scale.py --small: the 10M bench's code (data, serial and parallel `xmodal reindex`, a real
`xmodal serve`, recall against exact search) runs end to end on 20,000 x 64 vectors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def test_bench_scale_small_runs_and_the_parallel_build_is_the_serial_one(tmp_path):
    out = tmp_path / "scale.json"
    done = subprocess.run(
        [sys.executable, "bench/bench_scale.py", "--small", "--data", str(tmp_path / "data"), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (row,) = json.loads(out.read_text())["sizes"]
    assert row["n"] == 20_000 and [b["fill_workers"] for b in row["builds"]] == [1, 2]
    assert row["same_index_file"] is True  # parallel fill + merge published the serial build's index
    assert "IVF" in row["index_key"] and row["disk_bytes_per_vector"] <= 100
    assert row["in_process"]["recall_at_10"] >= 0.9 and row["served"]["recall_at_10"] >= 0.9
    assert row["served"]["ready_s"] > 0 and row["served"]["rss_after_queries"]["VmRSS"] > 0
    assert "| 20,000 |" in done.stdout and not (tmp_path / "data").exists()  # the table; data deleted
