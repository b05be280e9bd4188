"""Train or fine-tune open_clip models (CoCa: contrastive + captioning; CLIP: contrastive).

    from models.training import TrainConfig, WorldData, train
    result = train(TrainConfig(output_dir=Path("out/world-coca"), data=WorldData(), steps=2000))
    model = open_clip.create_model(f"local-dir:{result.output_dir}")

Only training code lives here; `app` and `indexer` never import it.
"""

from models.training.checkpoint import CheckpointMismatchError
from models.training.config import CsvData, TrainConfig, WorldData
from models.training.examples import vqa_text
from models.training.loop import Evaluate, TrainResult, train

__all__ = [
    "CheckpointMismatchError",
    "CsvData",
    "Evaluate",
    "TrainConfig",
    "TrainResult",
    "WorldData",
    "train",
    "vqa_text",
]
