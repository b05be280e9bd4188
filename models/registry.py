"""The project's own model architectures, registered with open_clip by name.

Architectures are JSON data in `models/configs/` (open_clip's config format), so
`open_clip.create_model("xmodal-tiny-coca")` works like any built-in name once
`register_configs()` has run. It is idempotent and cheap.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "configs"


@cache
def register_configs() -> tuple[str, ...]:
    """Add every JSON config in CONFIG_DIR to open_clip's registry; returns their names."""
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)
    return tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
