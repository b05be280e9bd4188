"""Every training setting, in one frozen dataclass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Precision = Literal["auto", "fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class WorldData:
    """Train on the generated world's train split (never its held-out scenes)."""

    scenes: int = 50_000
    seed: int = 0
    heldout_fraction: float = 0.1
    image_size: int = 64  # rendered size; the model's preprocessing resizes if it differs


@dataclass(frozen=True)
class CsvData:
    """A user's dataset: `image,caption` rows, plus optional `image,question,answer` rows.

    Question rows may come from `questions_csv` or from `question`/`answer` columns in
    `captions_csv`; either way they become "question: ... answer: ..." decoder targets.
    """

    captions_csv: Path
    questions_csv: Path | None = None
    # Where `image` names are resolved; default: <csv dir>/images if it exists, else <csv dir>.
    image_root: Path | None = None


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    output_dir: Path  # written in open_clip's local-dir layout
    data: WorldData | CsvData = field(default_factory=WorldData)
    # An open_clip model name (random init), "local-dir:<dir>" or a model directory (fine-tune).
    model: str = "xmodal-small-coca"
    pretrained: str | None = None  # a weights/checkpoint file loaded into `model` (names only)

    steps: int = 1000
    batch_size: int = 128
    lr: float = 1e-3
    min_lr_ratio: float = 0.0  # the cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    grad_clip_norm: float | None = 1.0

    contrastive_loss_weight: float = 1.0
    caption_loss_weight: float = 2.0  # open_clip's CoCa recipe
    vqa_fraction: float = 0.3  # share of decoder targets that are question/answer texts, when an image has any

    precision: Precision = "auto"  # auto: bf16 (or fp16) autocast on CUDA, fp32 on CPU
    device: str | None = None  # default: cuda if available, else cpu
    seed: int = 0
    num_workers: int = 0  # DataLoader workers; 0 loads in the training process
    # torch CPU threads for this process; None keeps torch's default. On a shared CPU, 1 thread
    # can beat 2 several times over: OpenMP threads stall waiting for a busy core.
    cpu_threads: int | None = None

    checkpoint_every: int = 500
    checkpoint_dir: Path | None = None  # default: <output_dir>.checkpoints, outside the model dir
    keep_checkpoints: int = 2
    eval_every: int = 0  # steps between calls of train()'s `evaluate` hook; 0: only after the last step

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError("steps must be at least 1")
        if self.batch_size < 2:
            raise ValueError("batch_size must be at least 2: the contrastive loss needs negatives")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError("warmup_steps must be between 0 and steps")
        if not 0.0 <= self.vqa_fraction <= 1.0:
            raise ValueError("vqa_fraction must be between 0 and 1")
        if self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise ValueError("checkpoint_every and keep_checkpoints must be at least 1")
        if self.eval_every < 0:
            raise ValueError("eval_every must be 0 or positive")

    @property
    def resolved_checkpoint_dir(self) -> Path:
        return self.checkpoint_dir or Path(f"{self.output_dir}.checkpoints")

    def trajectory(self) -> dict[str, str]:
        """The settings that decide the weights; a checkpoint resumes only if they are unchanged."""
        ignored = {
            "output_dir", "device", "num_workers", "cpu_threads", "checkpoint_every",
            "checkpoint_dir", "keep_checkpoints", "eval_every",
        }
        return {f.name: repr(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in ignored}
