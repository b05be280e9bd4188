"""The project's own model architectures, registered with open_clip by name.

Architectures are JSON data in `models/configs/` (open_clip's config format), so
`open_clip.create_model("xmodal-tiny-coca")` works like any built-in name once
`register_configs()` has run. It is idempotent and cheap.

A config may also ask for what open_clip cannot build (a convolutional vision stem,
`models.vision_stem.STEM_KEY`): open_clip registers the config without that key, and
`models.loading.create_open_clip_model` adds the stem. A plain `open_clip.create_model` of
such a name gives the architecture without its stem.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

from xmodal.models.vision_stem import STEM_KEY, split_model_cfg

CONFIG_DIR = Path(__file__).parent / "configs"
_STEMS: dict[str, dict[str, Any]] = {}


@cache
def register_configs() -> tuple[str, ...]:
    """Add every JSON config in CONFIG_DIR to open_clip's registry; returns their names."""
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)
    for path in sorted(CONFIG_DIR.glob("*.json")):
        plain, stem = split_model_cfg(json.loads(path.read_text()))
        if stem is not None:
            _STEMS[path.stem] = stem
            register_plain(plain, path.stem)
    return tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))


def architecture_cfg(name: str) -> dict[str, Any] | None:
    """The whole config of a registered architecture, its stem included (None: unknown name)."""
    import open_clip

    register_configs()
    model_cfg = open_clip.get_model_config(name)
    if model_cfg is not None and name in _STEMS:
        model_cfg[STEM_KEY] = dict(_STEMS[name])
    return model_cfg


def register_plain(model_cfg: dict[str, Any], name: str | None = None) -> str:
    """Register a config open_clip can build (no stem key) under `name` (default: one derived from
    its content); returns the name. open_clip has no public call that takes a config as data."""
    from open_clip import factory

    name = name or "xmodal-dir-" + hashlib.sha1(json.dumps(model_cfg, sort_keys=True).encode()).hexdigest()[:16]
    factory._MODEL_CONFIGS[name] = model_cfg
    return name
