"""The model training starts from: random weights from a config, or existing weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn

from models.registry import register_configs

LOCAL_DIR = "local-dir:"


@dataclass
class StartingModel:
    model: nn.Module
    model_cfg: dict[str, Any]  # saved with the result so open_clip can rebuild the architecture
    preprocess_cfg: dict[str, Any]
    tokenizer: Any
    from_scratch: bool


def load_starting_model(model: str, pretrained: str | None, device: torch.device) -> StartingModel:
    register_configs()
    name = _model_name(model)
    if name.startswith(LOCAL_DIR) and pretrained is not None:
        raise ValueError("`pretrained` applies to model names; a model directory already holds weights")
    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        raise ValueError(f"unknown model {model!r}: not an open_clip name, model directory or local-dir: path")

    net = open_clip.create_model(name, pretrained=pretrained, device=device)
    from_scratch = not name.startswith(LOCAL_DIR) and pretrained is None
    if from_scratch:
        _initialise_decoder_projection(net)
    return StartingModel(
        model=net,
        model_cfg=model_cfg,
        preprocess_cfg=open_clip.get_model_preprocess_cfg(net),
        tokenizer=open_clip.get_tokenizer(name),
        from_scratch=from_scratch,
    )


def _model_name(model: str) -> str:
    if not model.startswith(LOCAL_DIR) and Path(model).is_dir():
        return LOCAL_DIR + model
    return model


def _initialise_decoder_projection(model: nn.Module) -> None:
    # open_clip allocates CoCa's decoder output projection with torch.empty and never fills it.
    # Zeros (a common init for output heads) also keep every never-predicted token's column at
    # zero, which lets the caption loss skip those columns exactly (see objective.py).
    decoder = getattr(model, "text_decoder", None)
    if decoder is not None and decoder.text_projection is not None:
        with torch.no_grad():
            decoder.text_projection.zero_()
