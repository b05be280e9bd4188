"""The tuned settings `xmodal train` and `xmodal demo` start from, in one place.

WORLD_RECIPE trains xmodal-small-coca from scratch on the generated world in under ten minutes
of a 2-core CPU (see README "Training on the generated world" for what it reaches and
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

Then the image tower learnt where things are (full-length runs, 1,000 held-out scenes; the first
two trained alone, the others two at a time, which changes the time, not the result):

| run | P@1 | caption R@1 | image → text R@1 | caption exact / F1 | VQA position | VQA all |
|---|---|---|---|---|---|---|
| previous recipe | 0.408 | 0.788 | 0.783 | 0.017 / 0.813 | 0.180 | 0.541 |
| + question/answer targets teach the answer only | 0.389 | 0.699 | 0.666 | 0.036 / 0.821 | 0.185 | 0.542 |
| + vision position embeddings start at std 1.0 | 0.439 | 0.886 | 0.870 | 0.174 / 0.932 | 0.470 | 0.554 |
| same at std 2.0 | 0.457 | 0.914 | 0.905 | 0.292 / 0.945 | 0.465 | 0.559 |
| std 1.0, whole question/answer texts taught (kept) | 0.481 | 0.922 | 0.918 | 0.779 / 0.986 | 0.460 | 0.578 |
| std 2.0, whole texts | 0.508 | 0.919 | 0.896 | 0.636 / 0.976 | 0.475 | 0.573 |
| std 1.0, whole texts, vqa_fraction 0.5 | 0.521 | 0.932 | 0.891 | 0.111 / 0.658 | 0.460 | 0.557 |

open_clip starts ViT position embeddings at width ** -0.5 (0.1 here) while world patch embeddings
start near 0.7 and grow to 2.8: under the layer norm that follows, position all but vanished (a
linear probe read a patch's position back from the tower's output tokens 75% of the time on the
answers-only run's model; at std 1.0, 100%). Teaching the question's words helps because they are grounded too: a question names
objects the image holds. What still limits every metric is shape: a probe reads an object's shape
from its patch token 51% of the time (60% large, 41% small), while a one-hidden-layer MLP on the
raw patch pixels gets 100%, so the information is there and the tower learns it too slowly.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from xmodal.models.training.config import CsvData, TrainConfig, WorldData

DEFAULT_MODEL = "xmodal-small-coca"
WORLD_DATA = WorldData(scenes=50_000)
WORLD_SCENES = WORLD_DATA.scenes

# The recipe is the config itself: every field it does not set is TrainConfig's default, and the command
# line's `xmodal train` / `xmodal demo` defaults are read from it. world_config() gives it a real folder.
WORLD_RECIPE = TrainConfig(
    output_dir=Path(DEFAULT_MODEL),  # a placeholder: world_config() replaces it
    data=WORLD_DATA,
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
    vqa_answers_only=False,
    vision_position_std=1.0,
    weight_decay=0.1,
    num_workers=1,  # render and preprocess the next batch while this one trains
    checkpoint_every=100,
)


def world_config(output_dir: Path, data: WorldData | CsvData | None = None, **overrides: Any) -> TrainConfig:
    """WORLD_RECIPE writing to `output_dir`, on `data` (default: the world), with any TrainConfig field overridden."""
    return replace(WORLD_RECIPE, output_dir=Path(output_dir), data=data or WORLD_RECIPE.data, **overrides)
