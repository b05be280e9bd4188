"""`xmodal index` vs `xmodal index --ray local` on the same input, in one run: wall time, ratio, Ray's start-up
cost (ray.init + shutdown) and each command's peak memory: the largest single process among the command and
the children it reaped (ru_maxrss); Ray's worker processes, started by its raylet, are not included.

    python bench/bench_ray.py [--source ../shared/data/flickr8k-1k/images] [--model xmodal-tiny-clip]

A one-node cluster on the same cores cannot be faster than one process (goal: at most 1.25x slower); on a
2-core machine a second node adds no cores either, so a multi-node speed-up cannot be shown here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
XMODAL = str(Path(sys.executable).with_name("xmodal"))


# Runs the command in a fresh process, so ru_maxrss of its children is this command's alone.
MEASURE = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
    "sys.stdout.write(r.stdout); sys.stderr.write(r.stderr); "
    "print('maxrss', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)"
)


def run(args: list[str]) -> tuple[float, float, dict]:
    """Seconds, peak RSS (MiB) of the command's largest process, and its JSON report."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", MEASURE, XMODAL, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    peak_kib = int(result.stderr.rsplit("maxrss ", 1)[1].split()[0])
    return seconds, peak_kib / 1024, json.loads(result.stdout)


def ray_startup_seconds() -> float:
    code = "import time, ray; t = time.perf_counter(); ray.init(include_dashboard=False); ray.shutdown(); print(time.perf_counter() - t)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "data" / "flickr8k-1k" / "images")
    parser.add_argument("--model", default="xmodal-tiny-clip")
    parser.add_argument("--workers", default="1")
    args = parser.parse_args()
    common = ["--model", args.model, "--json", "--no-progress", "--batch-size", "64"]
    with tempfile.TemporaryDirectory() as folder:
        single = run(["index", str(args.source), "--out", f"{folder}/single", "--workers", args.workers, *common])
        on_ray = run(["index", str(args.source), "--out", f"{folder}/ray", "--ray", "local", *common])
    startup = ray_startup_seconds()
    figures = {
        "images": single[2]["indexed"] + single[2]["skipped"],
        "single_s": round(single[0], 2),
        "ray_local_s": round(on_ray[0], 2),
        "ratio": round(on_ray[0] / single[0], 3),
        "ray_init_shutdown_s": round(startup, 2),
        "single_peak_rss_mib": round(single[1]),
        "ray_driver_peak_rss_mib": round(on_ray[1]),
        "single_images_per_s": single[2]["images_per_s"],
        "ray_images_per_s": on_ray[2]["images_per_s"],
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
