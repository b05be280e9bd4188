"""Train or fine-tune open_clip models (CoCa: contrastive + captioning; CLIP: contrastive).

    from xmodal.models.training import TrainConfig, WorldData, train
    result = train(TrainConfig(output_dir=Path("out/world-coca"), data=WorldData(), steps=2000))
    loaded = load_model(f"local-dir:{result.output_dir}")  # xmodal.models.loading: stem and tokenizer too

Only training code lives here; `app` and `indexer` never import it, except the `xmodal train`,
`eval` and `demo` commands. Names are imported on first use, so reading `recipes` or `config`
(as the command line does for its defaults) does not import torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "CheckpointMismatchError": "xmodal.models.training.checkpoint",
    "CsvData": "xmodal.models.training.config",
    "TrainConfig": "xmodal.models.training.config",
    "WorldData": "xmodal.models.training.config",
    "Evaluate": "xmodal.models.training.loop",
    "TrainResult": "xmodal.models.training.loop",
    "train": "xmodal.models.training.loop",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from xmodal.models.training.checkpoint import CheckpointMismatchError
    from xmodal.models.training.config import CsvData, TrainConfig, WorldData
    from xmodal.models.training.loop import Evaluate, TrainResult, train


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'xmodal.models.training' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
