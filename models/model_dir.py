"""Write a model as an open_clip `local-dir` folder: the format every --model takes.

    open_clip_config.json        {"model_cfg": {...}, "preprocess_cfg": {...}}
    open_clip_model.safetensors  the state dict
    text_tokenizer.json          optional: the model's own tokenizer (models/text_tokenizer.py)
    languages.json               optional: the languages it writes (models/languages.py)

`xmodal train` writes its result this way; tests save tiny models this way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from xmodal.models.languages import LANGUAGES_FILE, LanguagePrompts, write_languages
from xmodal.models.loading import HUB_CONFIG_NAME, HUB_WEIGHT_NAMES
from xmodal.models.text_tokenizer import TOKENIZER_FILE, TrainedTokenizer

PREPROCESS_KEYS = ("size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color")


def save_model_dir(
    model: torch.nn.Module,
    model_cfg: dict,
    preprocess_cfg: dict,
    folder: str | Path,
    *,
    tokenizer: object = None,
    languages: dict[str, LanguagePrompts] | None = None,
) -> Path:
    """Save `model` (weights as float32) with its architecture and preprocessing; a trained `tokenizer`
    (a TrainedTokenizer; any other is the architecture's and not saved) and `languages` go with it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # The tokenizer and languages first: a folder whose config is written is complete.
    for name in (TOKENIZER_FILE, LANGUAGES_FILE):
        (folder / name).unlink(missing_ok=True)
    if isinstance(tokenizer, TrainedTokenizer):
        tokenizer.save(folder / TOKENIZER_FILE)
    if languages:
        write_languages(folder, languages)
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
