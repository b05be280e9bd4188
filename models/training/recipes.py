"""The tuned settings `xmodal train` and `xmodal demo` start from, in one place.

WORLD_RECIPE trains xmodal-small-coca from scratch on the generated world in under ten minutes
of a busy 2-core CPU (see README "Training on the generated world" for what it reaches and
bench/bench_world.py for the measurement). What the tuning found, in 400-step runs (25,600
images) measured on 500 held-out scenes:
- the architecture matters most: 48 px input with 16 px patches puts each of the world's five
  object slots at the centre of its own patch (a 3 x 3 grid), and without the attentional pooler
  the decoder attends to those 9 tokens directly. Against 64 px / 8 px patches with the pooler:
  twice the samples per second, and image → text R@1 0.55 instead of 0.28 at equal samples;
- partial attribute queries as second contrastive texts (query_fraction, text → image only):
  text → image P@1 for attribute queries 0.19 → 0.27;
- the decoder at 3x the learning rate with caption weight 2: captions and answers ground sooner;
- a peak learning rate of 2e-3: 3e-3 and 4e-3 train markedly worse, also with batch 32;
- not kept: 3 decoder targets per image (-40% throughput, no gain by step 400), hard negatives
  (near-miss captions; slower start, no gain by step 400), 96 px with 32 px patches.

Then the trainer got faster without changing the objective (objective.py: texts in length
groups, sparse vocabulary gradients): 1,000 steps took 329 s instead of 476 s (194 instead of
134 samples/s, at load averages of 2.3-3.5 and 3.4-4), so the recipe now takes 1,600 steps, about
530 s at that speed (380 s at load average 1.1-1.5, where it reached P@1 0.408, R@1 0.783,
caption exact 0.017, VQA 0.541). Full-length runs (1,000 held-out scenes; single runs, which
differ by a few points from run to run), against 1,450 steps of this recipe (385 s: text → image
P@1 0.415, image → text R@1 0.760, caption exact 0.017, VQA 0.539):
- batch 128 for 785 steps (about equal time: +8% samples/s): P@1 0.340, R@1 0.734, VQA 0.532;
- one hard negative per image, 1,450 steps: P@1 0.395, R@1 0.667, VQA 0.527;
- 6 instead of 4 vision layers, 1,450 steps: P@1 0.358, R@1 0.605, VQA 0.533.
None was kept.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from models.training.config import TrainConfig, WorldData

DEFAULT_MODEL = "xmodal-small-coca"

WORLD_RECIPE: dict[str, Any] = dict(
    model=DEFAULT_MODEL,
    steps=1600,
    batch_size=64,
    lr=2e-3,
    warmup_steps=60,
    decoder_lr_scale=3.0,
    caption_loss_weight=2.0,
    contrastive_loss_weight=1.0,
    vqa_fraction=0.3,
    decoder_targets=1,
    contrastive_texts=2,
    query_fraction=1.0,
    hard_negatives=0,
    weight_decay=0.1,
    num_workers=1,  # render and preprocess the next batch while this one trains
    checkpoint_every=100,
)
WORLD_SCENES = 50_000


def world_config(output_dir: Path, data: WorldData | None = None, **overrides: Any) -> TrainConfig:
    """WORLD_RECIPE for `output_dir`, with any TrainConfig field overridden."""
    config = TrainConfig(output_dir=Path(output_dir), data=data or WorldData(scenes=WORLD_SCENES), **WORLD_RECIPE)
    return replace(config, **overrides)
