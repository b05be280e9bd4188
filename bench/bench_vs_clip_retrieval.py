"""`xmodal index` against clip-retrieval (`inference` + `index`), same model, same machine, same run.

    python bench/bench_vs_clip_retrieval.py [--data DIR ...] [--repeats 1] [--batch-size 64]
                                            [--venv ~/.cache/xmodal/bench/clip-retrieval-venv]

What a user waits for: each side is timed by the wall clock around its command line(s), from process
start (imports, model load, clip-retrieval's warm-up) to the finished index on disk.

- xmodal:          xmodal index DIR --out OUT --model ViT-B-32:laion2b_s34b_b79k --batch-size B --no-progress --json
- clip-retrieval:  clip-retrieval inference --input_dataset DIR --output_folder OUT
                       --clip_model open_clip:ViT-B-32/laion2b_s34b_b79k --clip_cache_path HF_CACHE
                       --enable_text False --use_jit False --num_prepro_workers W --batch_size B
                   clip-retrieval index --embeddings_folder OUT --index_folder OUT/index

clip-retrieval lives in its own virtualenv (created once and reused: --venv): `pip install torch==2.14.1
torchvision==0.29.1 clip-retrieval==2.45.0`, then `pip install "setuptools<70"` on its own, because
torch 2.14.1 requires setuptools>=77 while clip-retrieval's `clip` package imports `pkg_resources`,
which newer setuptools no longer ship (one command with both pins is unresolvable).

Weights: both tools load the same file from a temporary Hugging Face cache filled with randomly
initialised ViT-B-32 weights (--seed) where open_clip looks for the pretrained tag (repo and file name
read from open_clip's pretrained config), with HF_HUB_OFFLINE=1. Random weights cost the same compute
as the published ones. Threads: nothing is pinned; both inherit this process's environment
(OMP_NUM_THREADS etc. are recorded) and torch picks its own thread count (recorded per venv).

Runs alternate (repeat 0: xmodal first, repeat 1: clip-retrieval first, ...), the medians give the
ratio. Checks that each side stored one vector per image and compares the two tools' embeddings of the
same files (cosine). Prints one table, writes JSON (default bench/results/vs_clip_retrieval.json).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from xmodal.app.testing import HUB_COMMIT, fill_hub_cache  # the same hub layout the loading tests use
from xmodal.indexer import store

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

DATA = ROOT.parent / "shared/data"
DEFAULT_VENV = Path(os.environ.get("XMODAL_BENCH_CR_VENV", "~/.cache/xmodal/bench/clip-retrieval-venv")).expanduser()
# Two steps: torch 2.14.1 needs setuptools>=77, clip-retrieval's `clip` needs pkg_resources (setuptools<70).
INSTALL_STEPS = (
    ["torch==2.14.1", "torchvision==0.29.1", "clip-retrieval==2.45.0"],
    ["setuptools<70"],
)
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY")


def ensure_venv(venv: Path) -> Path:
    """clip-retrieval's virtualenv, created and filled once; a marker file records what it holds."""
    marker = venv / "xmodal-bench.json"
    wanted = json.dumps(INSTALL_STEPS)
    if marker.is_file() and marker.read_text() == wanted and (venv / "bin/clip-retrieval").exists():
        return venv
    print(f"creating clip-retrieval's virtualenv in {venv} (once; a ~5.5 GB install) ...", flush=True)
    if not (venv / "bin/python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    print("(pip's warning that torch wants setuptools>=77 after the second step is expected)", flush=True)
    for step in INSTALL_STEPS:
        subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "--quiet", *step], check=True)
    marker.write_text(wanted)
    return venv


def venv_facts(python: Path, arch: str, tag: str) -> dict:
    """open_clip's pretrained config, the versions and torch's thread count inside a Python environment."""
    code = (
        "import json, torch, open_clip\n"
        f"cfg = open_clip.get_pretrained_cfg({arch!r}, {tag!r})\n"
        "print(json.dumps({'hf_hub': cfg.get('hf_hub', ''), 'open_clip': open_clip.__version__,"
        " 'torch': torch.__version__, 'torch_threads': torch.get_num_threads()}))\n"
    )
    out = subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def write_weights(hub_cache: Path, arch: str, hf_hub: str, seed: int) -> Path:
    """Seeded random weights for `arch`, laid out in the hub cache where the pretrained tag points."""
    import open_clip
    import torch
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME
    from safetensors.torch import save_file

    repo, filename = os.path.split(hf_hub)  # 'org/repo/' (default file names) or 'org/repo/file.bin'
    if not filename:
        filename = HF_SAFE_WEIGHTS_NAME
    elif filename.endswith((".bin", ".pth")):
        filename = filename[:-4] + ".safetensors"  # both open_clip and xmodal look for this one first
    torch.manual_seed(seed)
    logging.getLogger().setLevel(logging.ERROR)  # open_clip warns that the weights are random: they are meant to be
    model = open_clip.create_model(arch, pretrained=None)
    state = {name: t.detach().float().contiguous().clone() for name, t in model.state_dict().items()}
    hub_cache.mkdir(parents=True, exist_ok=True)
    weights = hub_cache.parent / filename
    save_file(state, str(weights))
    fill_hub_cache(hub_cache, repo, {filename: weights})
    weights.unlink()
    return hub_cache / f"models--{repo.replace('/', '--')}" / "snapshots" / HUB_COMMIT / filename


def timed(commands: list[list[str]], env: dict, log: Path, timeout: float) -> list[float]:
    """Run commands one after another, output to `log`; wall-clock seconds of each."""
    seconds = []
    with log.open("a") as out:
        for command in commands:
            out.write(f"$ {' '.join(command)}\n")
            out.flush()
            started = time.perf_counter()
            result = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
            seconds.append(time.perf_counter() - started)
            if result.returncode != 0:
                tail = log.read_text()[-3000:]
                raise SystemExit(f"failed with exit code {result.returncode}: {' '.join(command)}\n{tail}")
    return seconds


def run_xmodal(data: Path, out: Path, args, env: dict) -> tuple[list[float], dict]:
    command = [
        str(Path(sys.executable).parent / "xmodal"),
        "index",
        str(data),
        "--out",
        str(out),
        "--model",
        f"{args.arch}:{args.tag}",
        "--batch-size",
        str(args.batch_size),
        "--no-progress",
        "--json",
    ]
    if args.xmodal_workers is not None:
        command += ["--workers", str(args.xmodal_workers)]
    if args.int8_images:
        command += ["--int8-images"]
    log = out.parent / "xmodal.log"
    seconds = timed([command], env, log, args.timeout)
    version = out / (out / "CURRENT").read_text().strip()
    items = store.read_table(version, "items").to_pydict()
    emb = np.concatenate([np.load(p) for p in sorted(version.glob("images-*.npy"))]).astype(np.float32)
    names = [Path(path).name for path in items["path"]]
    import faiss

    indexed = faiss.read_index(str(version / "images.faiss")).ntotal
    text = log.read_text()  # --json: the report is the one block of lines from "{" to "}"
    try:
        report = json.loads(text[text.index("\n{") : text.rindex("}") + 1])
    except ValueError:
        report = {}
    return seconds, {
        "names": names,
        "emb": emb,
        "stored": len(emb),
        "indexed": indexed,
        "own_report": {key: report.get(key) for key in ("seconds", "embed_seconds", "images_per_s")},
    }


def run_clip_retrieval(data: Path, out: Path, args, env: dict, hub_cache: Path) -> tuple[list[float], dict]:
    cli = str(args.venv / "bin/clip-retrieval")
    inference = [
        cli,
        "inference",
        "--input_dataset",
        str(data),
        "--output_folder",
        str(out),
        "--clip_model",
        f"open_clip:{args.arch}/{args.tag}",
        "--clip_cache_path",
        str(hub_cache),
        "--enable_text",
        "False",
        "--use_jit",
        "False",
        "--num_prepro_workers",
        str(args.prepro_workers),
        "--batch_size",
        str(args.batch_size),
    ]
    index = [cli, "index", "--embeddings_folder", str(out), "--index_folder", str(out / "index")]
    log = out.parent / "clip-retrieval.log"
    seconds = timed([inference, index], env, log, args.timeout)
    emb = np.concatenate([np.load(p) for p in sorted((out / "img_emb").glob("img_emb_*.npy"))]).astype(np.float32)
    names = []
    for part in sorted((out / "metadata").glob("metadata_*.parquet")):
        names += [Path(path).name for path in _read_parquet(part)["image_path"]]
    import faiss

    indexed = faiss.read_index(str(out / "index" / "image.index")).ntotal
    warmup = re.findall(r"done warming up in ([0-9.]+)s", log.read_text())  # its own log line
    return seconds, {
        "names": names,
        "emb": emb,
        "stored": len(emb),
        "indexed": indexed,
        "warmup_s": round(float(warmup[-1]), 2) if warmup else None,
    }


def _read_parquet(path: Path) -> dict:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pydict()


def agreement(x: dict, c: dict) -> dict:
    """Cosine between the two tools' vectors of the same file; different files as the yardstick."""
    rows = {name: i for i, name in enumerate(c["names"])}
    common = [(i, rows[name]) for i, name in enumerate(x["names"]) if name in rows]
    a = x["emb"][[i for i, _ in common]]
    b = c["emb"][[j for _, j in common]]
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    same = (a * b).sum(axis=1)
    other = (a * np.roll(b, 1, axis=0)).sum(axis=1)  # each file against another file's vector
    top1 = float((np.argmax(a @ b.T, axis=1) == np.arange(len(a))).mean())
    return {
        "files": len(common),
        "cosine_same_file_mean": round(float(same.mean()), 6),
        "cosine_same_file_min": round(float(same.min()), 6),
        "cosine_other_file_mean": round(float(other.mean()), 6),
        "same_file_is_nearest": round(top1, 4),
    }


def image_count(data: Path) -> int:
    from xmodal.indexer.sources import open_source

    return len(open_source(data).records)


def parse_repeats(text: str, datasets: int) -> list[int]:
    values = [int(v) for v in text.split(",")]
    if len(values) == 1:
        values *= datasets
    if len(values) != datasets or min(values) < 1:
        raise SystemExit(f"--repeats: one count, or one per dataset ({datasets}), each >= 1: {text!r}")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data",
        type=Path,
        nargs="+",
        default=[DATA / "coco-mini/images", DATA / "flickr8k-1k/images"],
        help="image folders (default: coco-mini, flickr8k-1k from shared/data)",
    )
    parser.add_argument(
        "--repeats",
        default="1",
        help="runs per tool, alternating which goes first: one count or one per dataset, e.g. 2,1",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="both tools (clip-retrieval also warms up with it)")
    parser.add_argument("--prepro-workers", type=int, default=2, help="clip-retrieval --num_prepro_workers")
    parser.add_argument("--xmodal-workers", type=int, default=None, help="xmodal --workers (default: its own, cores-1)")
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--tag", default="laion2b_s34b_b79k", help="open_clip pretrained tag both tools resolve")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights written to the HF cache")
    parser.add_argument(
        "--venv",
        type=Path,
        default=DEFAULT_VENV,
        help="clip-retrieval's virtualenv, created on first use (env XMODAL_BENCH_CR_VENV)",
    )
    parser.add_argument(
        "--int8-images",
        action="store_true",
        help="xmodal index --int8-images: xmodal's image tower with int8 weight copies",
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed for one command")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "vs_clip_retrieval.json")
    args = parser.parse_args()
    repeats = parse_repeats(args.repeats, len(args.data))
    args.venv = ensure_venv(args.venv.expanduser())

    xmodal_facts = venv_facts(Path(sys.executable), args.arch, args.tag)
    cr_facts = venv_facts(args.venv / "bin/python", args.arch, args.tag)
    if not xmodal_facts["hf_hub"] or xmodal_facts["hf_hub"] != cr_facts["hf_hub"]:
        raise SystemExit(
            f"the tag resolves differently: xmodal {xmodal_facts['hf_hub']!r}, "
            f"clip-retrieval {cr_facts['hf_hub']!r} (need the same hub repo)"
        )

    rows, runs, checks = [], [], []
    with tempfile.TemporaryDirectory(prefix="xmodal-vs-cr-") as tmp:
        tmp = Path(tmp)
        hub_cache = tmp / "hf" / "hub"
        weights = write_weights(hub_cache, args.arch, xmodal_facts["hf_hub"], args.seed)
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_HOME": str(tmp / "hf"),
            "HF_HUB_CACHE": str(hub_cache),
            "WANDB_MODE": "disabled",
        }
        print(f"weights: {weights.relative_to(tmp)} (random, seed {args.seed})", flush=True)

        for data, count in zip(args.data, repeats):
            images = image_count(data)
            seconds = {"xmodal": [], "clip-retrieval": []}
            parts = []
            for repeat in range(count):
                order = ["xmodal", "clip-retrieval"] if repeat % 2 == 0 else ["clip-retrieval", "xmodal"]
                outputs = {}
                for tool in order:
                    work = tmp / f"{data.parent.name}-{repeat}-{tool}"
                    work.mkdir()
                    print(f"{data.parent.name}: {tool}, run {repeat + 1}/{count} ...", flush=True)
                    if tool == "xmodal":
                        took, outputs[tool] = run_xmodal(data, work / "index", args, env)
                        parts.append({"xmodal_own_report": outputs[tool]["own_report"]})
                    else:
                        took, outputs[tool] = run_clip_retrieval(data, work / "out", args, env, hub_cache)
                        parts.append(
                            {
                                "inference_s": round(took[0], 2),
                                "of_which_warmup_s": outputs[tool]["warmup_s"],
                                "index_s": round(took[1], 2),
                            }
                        )
                    seconds[tool].append(sum(took))
                    runs.append(
                        {"data": str(data), "repeat": repeat, "tool": tool, "seconds": [round(s, 2) for s in took]}
                    )
                    print(f"  {sum(took):.1f}s", flush=True)
                x, c = outputs["xmodal"], outputs["clip-retrieval"]
                check = {
                    "data": str(data),
                    "repeat": repeat,
                    "images": images,
                    "xmodal_vectors": x["stored"],
                    "xmodal_index_ntotal": x["indexed"],
                    "clip_retrieval_vectors": c["stored"],
                    "clip_retrieval_index_ntotal": c["indexed"],
                }
                check["counts_ok"] = x["stored"] == x["indexed"] == c["stored"] == c["indexed"] == images
                check.update(agreement(x, c))
                checks.append(check)
                for path in tmp.glob(f"{data.parent.name}-{repeat}-*"):
                    shutil.rmtree(path)
            median = {tool: statistics.median(values) for tool, values in seconds.items()}
            for tool in ("xmodal", "clip-retrieval"):
                rows.append(
                    {
                        "data": data.parent.name,
                        "images": images,
                        "tool": tool,
                        "runs": len(seconds[tool]),
                        "seconds_median": round(median[tool], 2),
                        "seconds_all": [round(s, 2) for s in seconds[tool]],
                        "images_per_s": round(images / median[tool], 2),
                        "speedup_vs_clip_retrieval": round(median["clip-retrieval"] / median[tool], 2),
                    }
                )
            rows[-2]["parts"] = [part for part in parts if "xmodal_own_report" in part]
            rows[-1]["parts"] = [part for part in parts if "inference_s" in part]

    hardware = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    result = {
        "model": f"{args.arch}:{args.tag}",
        "weights": f"random, seed {args.seed}",
        "batch_size": args.batch_size,
        "clip_retrieval_prepro_workers": args.prepro_workers,
        "xmodal_workers": args.xmodal_workers or "default",
        "xmodal_image_weights": "int8" if args.int8_images else "fp32",
        "hardware": hardware,
        "load_average_after": os.getloadavg(),
        "thread_env": {var: os.environ.get(var) for var in THREAD_VARS},
        "xmodal_env": xmodal_facts,
        "clip_retrieval_env": cr_facts,
        "results": rows,
        "runs": runs,
        "checks": checks,
    }

    print(
        f"\nxmodal index vs clip-retrieval inference+index: {result['model']} ({result['weights']}), "
        f"batch {args.batch_size}, CPU ({hardware}), torch threads {xmodal_facts['torch_threads']} / "
        f"{cr_facts['torch_threads']}, clip-retrieval {args.prepro_workers} prepro workers, xmodal image weights "
        f"{result['xmodal_image_weights']}"
    )
    print(
        f"{'dataset':<14}{'images':>7}  {'tool':<16}{'runs':>5}{'seconds':>10}{'images/s':>10}{'speedup':>9}  all runs (s)"
    )
    for row in rows:
        print(
            f"{row['data']:<14}{row['images']:>7}  {row['tool']:<16}{row['runs']:>5}{row['seconds_median']:>10.1f}"
            f"{row['images_per_s']:>10.2f}{row['speedup_vs_clip_retrieval']:>8.2f}x  {row['seconds_all']}"
        )
    for row in rows:
        for part in row["parts"] if row["tool"] == "clip-retrieval" else []:
            print(
                f"clip-retrieval on {row['data']}: inference {part['inference_s']}s (its warm-up at batch "
                f"{args.batch_size}: {part['of_which_warmup_s']}s), index {part['index_s']}s"
            )
    for check in checks:
        print(
            f"check {Path(check['data']).parent.name} run {check['repeat'] + 1}: vectors xmodal {check['xmodal_vectors']} "
            f"(index {check['xmodal_index_ntotal']}), "
            f"clip-retrieval {check['clip_retrieval_vectors']} (index {check['clip_retrieval_index_ntotal']}) "
            f"of {check['images']} images: {'ok' if check['counts_ok'] else 'MISMATCH'}; cosine same file "
            f"mean {check['cosine_same_file_mean']:.5f} min {check['cosine_same_file_min']:.5f} "
            f"(other file {check['cosine_other_file_mean']:.5f}), same file nearest {check['same_file_is_nearest']:.0%}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    if not all(check["counts_ok"] for check in checks):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
