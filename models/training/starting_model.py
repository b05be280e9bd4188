"""The model training starts from: random weights from a config, or any model spec's weights.

A bare architecture name (`xmodal-small-coca`) starts from scratch with the trainer's seed.
Every other spec form the models layer accepts (pretrained tag, `hf-hub:`, `local-dir:` or a
model folder, `NAME:/path/checkpoint`) is loaded by `models.loading.load_model`, on the CPU in
float32, then moved to the training device: offline mode, the Hugging Face cache and its
errors behave exactly as for indexing and serving.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn

from xmodal.models.loading import ModelSpecError, create_open_clip_model, load_model
from xmodal.models.registry import architecture_cfg, register_configs
from xmodal.models.specs import SpecKind, parse_spec
from xmodal.models.text_tokenizer import TrainedTokenizer
from xmodal.models.vision_stem import STEM_KEY

LOCAL_DIR = "local-dir:"


@dataclass
class StartingModel:
    model: nn.Module
    model_cfg: dict[str, Any]  # saved with the result so open_clip can rebuild the architecture
    preprocess_cfg: dict[str, Any]
    tokenizer: Any
    from_scratch: bool


def load_starting_model(
    model: str,
    pretrained: str | None,
    device: torch.device,
    vision_position_std: float | None = None,
    tokenizer: TrainedTokenizer | None = None,
    model_overrides: tuple[tuple[str, Any], ...] = (),
) -> StartingModel:
    """`model` is a model spec; `pretrained` (a tag or weights file) applies to bare names only.
    `vision_position_std`: from scratch only, the ViT's position embeddings start at this
    standard deviation instead of open_clip's (see TrainConfig.vision_position_std).
    `tokenizer`: from scratch only, a learnt tokenizer the text and decoder vocabularies are sized to.
    `model_overrides`: from scratch only, ("tower.field", value) or ("field", value) changes to the
    architecture's config (see TrainConfig.model_overrides); the returned model_cfg holds them."""
    register_configs()
    spec = parse_spec(_spec_text(model, pretrained))
    if tokenizer is not None and spec.kind is not SpecKind.RANDOM:
        raise ValueError(f"a learnt tokenizer needs a model trained from scratch; {model} has its own vocabulary")
    if model_overrides and spec.kind is not SpecKind.RANDOM:
        raise ValueError(f"model_overrides change an architecture trained from scratch; {model} has its weights")
    if spec.kind is not SpecKind.RANDOM:
        # load_model sets torch's CPU threads; keep the ones the trainer chose.
        loaded = load_model(spec, "cpu", threads=torch.get_num_threads())
        net = loaded.model.to(device=device, dtype=torch.float32)
        return StartingModel(net, loaded.model_cfg, dict(loaded.preprocess_cfg), loaded.tokenizer, from_scratch=False)

    model_cfg = architecture_cfg(spec.arch) if spec.arch else None
    if model_cfg is None or spec.arch is None:
        raise ModelSpecError(
            f"unknown model {model!r}: not an open_clip architecture, model directory or model spec "
            f"(the project's own architectures: {', '.join(register_configs())})"
        )
    changes = list(model_overrides)
    if tokenizer is not None:
        changes += [(f"{k}.vocab_size", tokenizer.vocab_size) for k in ("text_cfg", "multimodal_cfg") if k in model_cfg]
    changed = _changed_config(model_cfg, changes, spec.arch)
    model_cfg = {**model_cfg, **changed}
    if tokenizer is not None:
        tokenizer.context_length = int(model_cfg["text_cfg"].get("context_length", tokenizer.context_length))
    # Random weights from the global RNG, which train() has seeded with the config's seed.
    try:
        net = create_open_clip_model(spec.arch, device=device, **changed)
    except TypeError as error:
        if all("." in key for key, _ in changes):
            raise
        # A top-level field the model class does not take.
        raise ValueError(f"model_overrides: {spec.arch} does not take {error}") from error
    _initialise_decoder_projection(net)
    if vision_position_std is not None:
        _initialise_vision_positions(net, vision_position_std)
    return StartingModel(
        model=net,
        model_cfg=model_cfg,
        preprocess_cfg=open_clip.get_model_preprocess_cfg(net),
        tokenizer=tokenizer or open_clip.get_tokenizer(spec.arch),
        from_scratch=True,
    )


def _changed_config(model_cfg: dict[str, Any], changes: list[tuple[str, Any]], arch: str) -> dict[str, Any]:
    """The entries of `model_cfg` that `changes` touch: ("tower.field", value) gives a changed copy of
    the tower, ("field", value) a top-level value open_clip's model takes (embed_dim, init_logit_scale)."""
    changed: dict[str, Any] = {}
    known = ", ".join(k for k, v in model_cfg.items() if isinstance(v, dict) and k != STEM_KEY)
    for key, value in changes:
        tower, dot, name = key.partition(".")
        if not dot:
            if isinstance(model_cfg.get(key), dict) or key == STEM_KEY:
                raise ValueError(f"model_overrides: {key!r} is a tower; change its fields ('{key}.layers')")
            changed[key] = value
            continue
        if tower == STEM_KEY or not isinstance(model_cfg.get(tower), dict):
            raise ValueError(f"model_overrides: {arch} has no {tower!r} (its towers: {known})")
        changed.setdefault(tower, dict(model_cfg[tower]))[name] = value
    return changed


def _spec_text(model: str, pretrained: str | None) -> str:
    if not model.startswith(LOCAL_DIR) and ":" not in model and Path(model).is_dir():
        model = LOCAL_DIR + model
    if pretrained is None:
        return model
    if model.startswith(LOCAL_DIR) or ":" in model:
        raise ValueError("`pretrained` applies to bare model names; this model spec already names its weights")
    return f"{model}:{pretrained}"


def _initialise_decoder_projection(model: nn.Module) -> None:
    # open_clip allocates CoCa's decoder output projection with torch.empty and never fills it.
    # Zeros (a common init for output heads) also keep every never-predicted token's column at
    # zero, which lets the caption loss skip those columns exactly (see objective.py).
    decoder = getattr(model, "text_decoder", None)
    if decoder is not None and decoder.text_projection is not None:
        with torch.no_grad():
            decoder.text_projection.zero_()


def _initialise_vision_positions(model: nn.Module, std: float) -> None:
    # Vision transformers only; other towers (ModifiedResNet, timm) keep their own init.
    positions = getattr(getattr(model, "visual", None), "positional_embedding", None)
    if isinstance(positions, nn.Parameter):
        with torch.no_grad():
            positions.normal_(std=std)
