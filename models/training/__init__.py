"""Train or fine-tune open_clip models (CoCa: contrastive + captioning; CLIP: contrastive).

    from models.training import TrainConfig, WorldData, train
    result = train(TrainConfig(output_dir=Path("out/world-coca"), data=WorldData(), steps=2000))
    model = open_clip.create_model(f"local-dir:{result.output_dir}")

Only training code lives here; `app` and `indexer` never import it, except the `xmodal train`,
`eval` and `demo` commands. Names are imported on first use, so reading `recipes` or `config`
(as the command line does for its defaults) does not import torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "CheckpointMismatchError": "models.training.checkpoint",
    "CsvData": "models.training.config",
    "TrainConfig": "models.training.config",
    "WorldData": "models.training.config",
    "vqa_text": "models.training.examples",
    "Evaluate": "models.training.loop",
    "TrainResult": "models.training.loop",
    "train": "models.training.loop",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from models.training.checkpoint import CheckpointMismatchError
    from models.training.config import CsvData, TrainConfig, WorldData
    from models.training.examples import vqa_text
    from models.training.loop import Evaluate, TrainResult, train


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'models.training' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
