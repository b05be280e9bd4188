"""Model specs: the one string a user writes to name a model, parsed.

Forms (see docs/models.md and docs/models-hf.md):
- `ViT-B-32:laion2b_s34b_b79k`       open_clip name + pretrained tag (Hugging Face cache)
- `hf-hub:org/repo`                  an open_clip model repository on the hub
- `hf:org/repo`                      a Transformers CLIP / SigLIP repository on the hub (models/hf.py)
- `local-dir:/path` or `/path/`      a folder with open_clip_config.json + weights, or a Transformers
                                     folder (config.json with model_type clip/siglip/siglip2; models/hf.py)
- `ViT-B-32:/path/weights.safetensors`  open_clip name + a local checkpoint (.safetensors/.pt/.bin/.pth)
- `xmodal-tiny-coca`                 a bare name: random weights from a fixed seed (tests, benchmarks)
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
DEFAULT_SPEC = "coca_ViT-B-32:laion2b_s13b_b90k"


class SpecKind(str, enum.Enum):
    PRETRAINED = "pretrained"
    HF_HUB = "hf-hub"
    HF = "hf"  # a Transformers checkpoint on the hub (models/hf.py)
    LOCAL_DIR = "local-dir"
    CHECKPOINT = "checkpoint"
    RANDOM = "random"


@dataclass(frozen=True)
class ModelSpec:
    kind: SpecKind
    arch: str | None  # open_clip architecture name, when the spec names one
    source: str | None  # tag, hub repo id, or absolute path

    def __str__(self) -> str:
        """The canonical spec string; parse_spec(str(spec)) == spec."""
        if self.kind is SpecKind.HF_HUB:
            return f"hf-hub:{self.source}"
        if self.kind is SpecKind.HF:
            return f"hf:{self.source}"
        if self.kind is SpecKind.LOCAL_DIR:
            return f"local-dir:{self.source}"
        if self.kind is SpecKind.RANDOM:
            return str(self.arch)
        return f"{self.arch}:{self.source}"

    @property
    def model_id(self) -> str:
        """A filesystem-safe name for caches and logs."""
        return str(self).replace("/", "_").replace(":", "__").strip("_")


def parse_spec(text: str) -> ModelSpec:
    """Parse a user's model spec; raises ValueError with the accepted forms."""
    text = text.strip()
    if not text:
        raise ValueError("empty model spec")
    if text.startswith("hf-hub:"):
        repo = text.removeprefix("hf-hub:").strip("/")
        if repo.count("/") != 1:
            raise ValueError(f"hf-hub spec needs 'hf-hub:org/repo', got {text!r}")
        return ModelSpec(SpecKind.HF_HUB, None, repo)
    if text.startswith("hf:"):
        repo = text.removeprefix("hf:").strip("/")
        if repo.count("/") != 1:
            raise ValueError(f"hf spec needs 'hf:org/repo' (a Transformers CLIP or SigLIP repository), got {text!r}")
        return ModelSpec(SpecKind.HF, None, repo)
    if text.startswith("local-dir:"):
        return ModelSpec(SpecKind.LOCAL_DIR, None, _absolute(text.removeprefix("local-dir:")))
    if os.sep in text.split(":", 1)[0] or text.startswith("."):
        # A bare path (no name before it): a local model directory.
        return ModelSpec(SpecKind.LOCAL_DIR, None, _absolute(text))
    arch, sep, rest = text.partition(":")
    if not sep:
        return ModelSpec(SpecKind.RANDOM, arch, None)
    if not rest:
        raise ValueError(f"model spec {text!r} has an empty pretrained tag after ':'")
    if rest.lower().endswith(CHECKPOINT_SUFFIXES) or os.sep in rest:
        return ModelSpec(SpecKind.CHECKPOINT, arch, _absolute(rest))
    return ModelSpec(SpecKind.PRETRAINED, arch, rest)


def _absolute(path: str) -> str:
    if not path:
        raise ValueError("empty path in model spec")
    return str(Path(path).expanduser().resolve())
