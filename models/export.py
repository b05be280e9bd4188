"""Write a model as an open_clip `local-dir` folder: the format every --model takes.

    open_clip_config.json        {"model_cfg": {...}, "preprocess_cfg": {...}}
    open_clip_model.safetensors  the state dict
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from models.loading import HUB_CONFIG_NAME, HUB_WEIGHT_NAMES

PREPROCESS_KEYS = ("size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color")


def save_model_dir(model: torch.nn.Module, model_cfg: dict, preprocess_cfg: dict, folder: str | Path) -> Path:
    """Save `model` (weights as float32) with its architecture and preprocessing."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    preprocess = {key: _plain(preprocess_cfg[key]) for key in PREPROCESS_KEYS if key in preprocess_cfg}
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess}
    (folder / HUB_CONFIG_NAME).write_text(json.dumps(config, indent=2))
    # safetensors refuses shared storage; clone so tied tensors are written separately.
    state = {name: tensor.detach().to("cpu", torch.float32).contiguous().clone() for name, tensor in model.state_dict().items()}
    save_file(state, folder / HUB_WEIGHT_NAMES[0])
    return folder


def _plain(value):
    return list(value) if isinstance(value, tuple) else value
