"""Write a model as an open_clip `local-dir` folder: the format every --model takes.

    open_clip_config.json        {"model_cfg": {...}, "preprocess_cfg": {...}}
    open_clip_model.safetensors  the state dict

`xmodal train` writes its result this way; tests save tiny models this way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from xmodal.models.loading import HUB_CONFIG_NAME, HUB_WEIGHT_NAMES

PREPROCESS_KEYS = ("size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color")


def save_model_dir(model: torch.nn.Module, model_cfg: dict, preprocess_cfg: dict, folder: str | Path) -> Path:
    """Save `model` (weights as float32) with its architecture and preprocessing."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    preprocess = {key: _plain(preprocess_cfg[key]) for key in PREPROCESS_KEYS if key in preprocess_cfg}
    # safetensors refuses shared storage; clone so tied tensors are written separately.
    state = {name: t.detach().to("cpu", torch.float32).contiguous().clone() for name, t in model.state_dict().items()}
    # Each file is written under a temporary name and renamed: a crash never leaves half a model.
    weights, config = folder / HUB_WEIGHT_NAMES[0], folder / HUB_CONFIG_NAME
    save_file(state, f"{weights}.tmp")
    os.replace(f"{weights}.tmp", weights)
    Path(f"{config}.tmp").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}, indent=2) + "\n"
    )
    os.replace(f"{config}.tmp", config)
    return folder


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
