"""`xmodal index` vs `xmodal index --ray` on the same input, in one run: one process, a one-node local Ray
cluster (`--ray local`) and a two-node local cluster (two raylets of one CPU each, ray.cluster_utils.Cluster),
for a tiny model (decoding and start-up dominate) and ViT-B-32 with random weights (encoding dominates).

    python bench/bench_ray.py [--source ../shared/data/flickr8k-1k/images] [--models xmodal-tiny-clip,ViT-B-32]
                              [--images 1000] [--json bench/results/ray.json]

Needs psutil (`pip install -e ".[ray,bench]"`).

Each build runs as its own `xmodal index --json` command. Wall time is the command's, from outside; the
report's `embed_seconds` is its embedding phase (for --ray: after the cluster is up, before it shuts down).
Start-up: `ray.init()` + `ray.shutdown()` timed alone, and the two-node cluster's start. Peak RSS is
sampled every 0.2 s with psutil over every process of the job (the command and its children; for the
two-node cluster also the cluster's processes) and reported per role: the driver, the embedding actor, the
largest task worker (decode tasks; for the single build its DataLoader worker), the largest of Ray's own
processes (raylet, GCS, agents), and the peak of the sum over all (pages shared by processes count in each).
A one-node cluster on the same cores cannot be faster than one process; on 2 cores a second node adds no
cores either, so no multi-node speed-up can show here: the two-node figure measures Ray's cost of
spreading the job, not a gain.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
XMODAL = str(Path(sys.executable).with_name("xmodal"))
ROLES = ("driver", "actor", "worker", "ray_system", "other")


def role(process: psutil.Process, driver: int) -> str:
    """driver, actor (the embedding actor), worker (Ray's task workers: decode tasks, idle workers; the
    single build's DataLoader workers), ray_system (GCS, raylet, agents, log monitor) or other."""
    if process.pid == driver:
        return "driver"
    try:
        command = process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "other"
    title, line = (command[0] if command else ""), " ".join(command)
    if "EmbedParts" in title or "MapWorker" in title:
        return "actor"
    if title.startswith("ray::") or "default_worker.py" in line:
        return "worker"
    if "/ray/" in line:
        return "ray_system"
    if process.ppid() == driver:
        return "worker"  # a DataLoader worker of the single build
    return "other"


RANK = {"other": 0, "ray_system": 1, "worker": 2, "actor": 3, "driver": 4}  # a worker's title changes as it runs


class Sampler(threading.Thread):
    """Peak RSS per process of the trees under `roots`, every 0.2 s, grouped by role."""

    def __init__(self, roots: list[int], driver: int):
        super().__init__(daemon=True)
        self.roots, self.driver, self.stop = roots, driver, threading.Event()
        self.peak: dict[int, tuple[str, int]] = {}
        self.peak_total = 0

    def run(self) -> None:
        while not self.stop.is_set():
            total = 0
            for root in self.roots:
                try:
                    tree = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
                except psutil.NoSuchProcess:
                    continue
                for process in tree:
                    try:
                        rss = process.memory_info().rss
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        continue
                    total += rss
                    name, best = self.peak.get(process.pid, ("other", 0))
                    now = role(process, self.driver)
                    self.peak[process.pid] = (now if RANK[now] > RANK[name] else name, max(best, rss))
            self.peak_total = max(self.peak_total, total)
            time.sleep(0.2)

    def by_role(self) -> dict[str, float]:
        """MiB: the largest process of each role, and the peak of the whole job's summed RSS."""
        largest: dict[str, int] = defaultdict(int)
        for name, rss in self.peak.values():
            largest[name] = max(largest[name], rss)
        return {
            **{name: round(largest[name] / 2**20) for name in ROLES if name in largest},
            "sum": round(self.peak_total / 2**20),
        }


def run(args: list[str], extra_roots: tuple[int, ...] = ()) -> dict:
    """One `xmodal index` command: wall seconds, its JSON report, peak RSS by role."""
    started = time.perf_counter()
    process = subprocess.Popen([XMODAL, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = Sampler([process.pid, *extra_roots], process.pid)
    sampler.start()
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(stderr[-3000:])
    report = json.loads(stdout)
    return {
        "wall_s": round(seconds, 2),
        "embed_s": report["embed_seconds"],
        "images_per_s": report["images_per_s"],
        "indexed": report["indexed"],
        "peak_rss_mib": sampler.by_role(),
    }


def ray_startup_seconds() -> float:
    code = (
        "import time, ray; t = time.perf_counter(); ray.init(include_dashboard=False); ray.shutdown(); "
        "print(time.perf_counter() - t)"
    )
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def bench_model(model: str, source: Path, folder: Path) -> dict:
    common = [str(source), "--model", model, "--json", "--no-progress", "--batch-size", "64"]
    figures: dict = {"model": model}
    figures["single"] = run(["index", *common, "--out", str(folder / "single"), "--workers", "1"])
    figures["ray_local"] = run(["index", *common, "--out", str(folder / "local"), "--ray", "local"])
    figures["ray_local"]["startup_s"] = round(ray_startup_seconds(), 2)

    from ray.cluster_utils import Cluster

    started = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    cluster_start = time.perf_counter() - started
    try:
        cluster_pids = [p.pid for p in psutil.Process().children() if "ray" in " ".join(p.cmdline())]
        two = run(["index", *common, "--out", str(folder / "two"), "--ray", cluster.address], tuple(cluster_pids))
    finally:
        cluster.shutdown()
    two["startup_s"] = round(cluster_start, 2)
    figures["ray_two_nodes"] = two
    single = figures["single"]["wall_s"]
    figures["ratio_local_vs_single"] = round(figures["ray_local"]["wall_s"] / single, 3)
    figures["ratio_two_nodes_vs_single"] = round(two["wall_s"] / single, 3)
    figures["ratio_two_nodes_vs_local"] = round(two["wall_s"] / figures["ray_local"]["wall_s"], 3)
    return figures


def table(results: list[dict]) -> str:
    lines = [
        "| model | run | wall s | ratio | embed s | img/s | start-up s | peak RSS MiB: driver / actor / worker / ray system / sum |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for figures in results:
        single = figures["single"]["wall_s"]
        for name in ("single", "ray_local", "ray_two_nodes"):
            run_ = figures[name]
            rss = run_["peak_rss_mib"]
            memory = " / ".join(str(rss.get(k, "-")) for k in ("driver", "actor", "worker", "ray_system", "sum"))
            lines.append(
                f"| {figures['model']} | {name} | {run_['wall_s']} | {run_['wall_s'] / single:.2f}x | {run_['embed_s']} "
                f"| {run_['images_per_s']} | {run_.get('startup_s', '-')} | {memory} |"
            )
        two = figures["ray_two_nodes"]
        lines.append(
            f"| {figures['model']} | ray_two_nodes + its start | {two['wall_s'] + two['startup_s']:.2f} "
            f"| {(two['wall_s'] + two['startup_s']) / single:.2f}x | | | | |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "data" / "flickr8k-1k" / "images")
    parser.add_argument("--models", default="xmodal-tiny-clip,ViT-B-32")
    parser.add_argument("--images", type=int, default=1000, help="the first N images of --source")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "ray.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "images.txt"
        files = sorted(p for p in args.source.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        listing.write_text("\n".join(str(p.resolve()) for p in files[: args.images]) + "\n")
        for model in args.models.split(","):
            folder = Path(tmp) / model
            folder.mkdir()
            results.append(bench_model(model, listing, folder))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    summary = {
        "images": results[0]["single"]["indexed"],
        "source": str(args.source),
        "cores": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "results": results,
    }
    print(table(results))
    print(f"load average before {summary['loadavg_before']}, after {summary['loadavg_after']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
