"""Every training setting, in one frozen dataclass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Precision = Literal["auto", "fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class WorldData:
    """Train on the generated world's train split (never its held-out scenes)."""

    scenes: int = 50_000
    seed: int = 0
    heldout_fraction: float = 0.1
    image_size: int = 64  # rendered size; the model's preprocessing resizes if it differs
    # The languages of the texts (models.world.grammar): with ("en", "zh") every scene appears once per
    # epoch in each, its captions, queries and questions in that language (docs/decisions/bilingual-world.md).
    languages: tuple[str, ...] = ("en",)


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
    # A model spec: an architecture name starts from random weights; any other spec form
    # (pretrained tag, hf-hub:, local-dir: or a model folder, NAME:/path/ckpt) is fine-tuned.
    model: str = "xmodal-small-coca"
    # From scratch only: changes to the architecture's config, each a ("tower.field", value) pair such as
    # ("multimodal_cfg.layers", 3), or ("field", value) for a top-level one such as ("init_logit_scale", 3.4)
    # (open_clip starts the contrastive temperature at log(1 / 0.07)). The trained model's folder records the
    # changed config, so it loads like any other. Pairs in a tuple rather than a dict: configs are hashable.
    model_overrides: tuple[tuple[str, Any], ...] = ()
    pretrained: str | None = None  # a pretrained tag or weights file for a bare `model` name
    # None: the model's own tokenizer (the architecture's, or its folder's). "world" (from scratch on world
    # data): a BPE learnt on the world's text in the data's languages, written into the model folder; the
    # text and decoder vocabularies are sized to it (models/training/tokenizer.py).
    tokenizer: str | None = None

    steps: int = 1000
    batch_size: int = 128
    lr: float = 1e-3
    decoder_lr_scale: float = 1.0  # CoCa: the text decoder's learning rate is lr * decoder_lr_scale
    min_lr_ratio: float = 0.0  # the cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    grad_clip_norm: float | None = 1.0

    # From scratch only: the vision transformer's position embeddings start at this standard
    # deviation (None: open_clip's width ** -0.5, 0.1 for xmodal-small-coca). Patch embeddings of
    # world scenes start near 0.7 and grow to ~2.8 in training, so at 0.1 a patch's position all
    # but vanished under the layer norm that follows: a linear probe read it back from the tower's
    # output tokens only 75% of the time, and the decoder placed objects by chance (VQA position
    # 0.18 of 5 answers). At 1.0 the probe reads it back every time; recipe results in recipes.py.
    vision_position_std: float | None = 1.0
    contrastive_loss_weight: float = 1.0
    caption_loss_weight: float = 2.0  # open_clip's CoCa recipe
    vqa_fraction: float = 0.3  # share of decoder targets that are question/answer texts, when an image has any
    # True: a question/answer target teaches its answer only (the question is a prompt, as when
    # the decoder answers one). False (default) teaches the question's words too, which on the
    # world is grounded supervision of its own (a question names objects the image holds): with
    # answers only, the recipe's caption exact match fell from 0.78 to 0.17 (recipes.py).
    vqa_answers_only: bool = False
    # The captioning loss's weight on the answer tokens of a question/answer target ("red" in "question:
    # what colour is the circle? answer: red"), relative to every other taught token (weight 1). The loss
    # stays a sum over taught tokens divided by their count, so other tokens' gradients are unchanged: an
    # image's one answer token is otherwise one of ~40 it teaches (its caption and question words).
    answer_loss_weight: float = 1.0
    # Weight of the "where to look" loss: at the position a question target's answer is predicted
    # from, the first head of the decoder's first cross-attention is taught to attend to the image
    # patches of the objects the answer is read from (world.QA.where). 0 leaves attention untaught.
    attention_loss_weight: float = 0.0
    # Weight of a third contrastive term: each image ranks the batch's partial queries, the ones it
    # satisfies first (image → query). Text → image alone shows a query only the batch's ~50 images; this
    # shows each image every query of the batch, near misses among them. 0: partial queries only find images.
    image_to_query_weight: float = 0.0
    # Decoder texts per image and step, sharing one image forward. With more than one, the first
    # is a caption and each other a question/answer text with probability vqa_fraction.
    decoder_targets: int = 1
    # Contrastive texts per image and step (the text tower is cheap). With more than one, the
    # first is a caption and the others may be partial queries (query_fraction).
    contrastive_texts: int = 1
    # World data: share of (extra) contrastive texts that are partial attribute queries ("a red
    # circle on the left"). A query's targets are every batch image that satisfies it; being
    # partial, it is not a caption image → text retrieval should rank first, so only the text →
    # image half of the contrastive loss uses it.
    query_fraction: float = 0.0
    # World data: extra contrastive texts per image that describe a scene one attribute away
    # (shape, colour, size or position of one object changed): hard negatives.
    hard_negatives: int = 0
    # World data: extra contrastive texts per image that describe the scene with one attribute
    # SWAPPED between two of its objects ("a red circle and a blue square" -> "a blue circle and
    # a red square"): the same words, bound differently (NegCLIP-style binding negatives).
    swap_negatives: int = 0
    # World data: share of batch positions (the odd ones) that hold the scene of the position
    # before with one attribute swapped between two of its objects, rendered: a binding twin.
    # Each is the other's hard negative image and text, for captions and partial queries alike.
    twin_fraction: float = 0.0
    # Decoder targets per image, after the decoder_targets ones, that are always a question/answer
    # text, its question type drawn uniformly from the types the image has questions of.
    qa_targets: int = 0
    # World data: how many times likelier that draw picks the presence type than each other type: presence
    # questions ask about arbitrary partial queries, what search re-ranking asks (models/rerank.py).
    presence_weight: float = 1.0

    precision: Precision = "auto"  # auto: bf16 (or fp16) autocast on CUDA, fp32 on CPU
    device: str | None = None  # default: cuda if available, else cpu
    seed: int = 0
    num_workers: int = 0  # DataLoader workers; 0 loads in the training process
    # torch CPU threads for this process. None: on a CPU, the cores the data workers leave free
    # (at least 1), since OpenMP threads that share a core with a worker stall waiting for it; the
    # recipe's 1 worker on 2 cores trained at 157 samples/s with 2 threads and 220-270 with 1.
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
        if self.answer_loss_weight < 0:
            raise ValueError("answer_loss_weight must be 0 or more")
        if self.attention_loss_weight < 0:
            raise ValueError("attention_loss_weight must be 0 or more")
        if self.image_to_query_weight < 0:
            raise ValueError("image_to_query_weight must be 0 or more")
        for key, _ in self.model_overrides:
            if key.count(".") > 1 or not all(key.split(".")):
                raise ValueError(
                    f"model_overrides keys are 'tower.field' (e.g. 'text_cfg.layers') or a top-level 'field' "
                    f"(e.g. 'init_logit_scale'), got {key!r}"
                )
        if self.decoder_lr_scale <= 0:
            raise ValueError("decoder_lr_scale must be positive")
        if self.presence_weight <= 0:
            raise ValueError("presence_weight must be above 0")
        if min(self.hard_negatives, self.swap_negatives, self.qa_targets) < 0:
            raise ValueError("hard_negatives, swap_negatives and qa_targets must be 0 or more")
        if not 0.0 <= self.twin_fraction <= 1.0:
            raise ValueError("twin_fraction must be between 0 and 1")
        if self.decoder_targets < 1 or self.contrastive_texts < 1:
            raise ValueError("decoder_targets and contrastive_texts must be at least 1")
        if not 0.0 <= self.query_fraction <= 1.0:
            raise ValueError("query_fraction must be between 0 and 1")
        if self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise ValueError("checkpoint_every and keep_checkpoints must be at least 1")
        if self.eval_every < 0:
            raise ValueError("eval_every must be 0 or positive")
        if self.tokenizer not in (None, "world"):
            raise ValueError(f"tokenizer must be None or 'world', got {self.tokenizer!r}")
        if self.tokenizer == "world" and not isinstance(self.data, WorldData):
            raise ValueError("tokenizer='world' learns from the generated world's text: train on WorldData")

    @property
    def resolved_checkpoint_dir(self) -> Path:
        return self.checkpoint_dir or Path(f"{self.output_dir}.checkpoints")

    def trajectory(self) -> dict[str, str]:
        """The settings that decide the weights; a checkpoint resumes only if they are unchanged."""
        ignored = {
            "output_dir",
            "device",
            "num_workers",
            "cpu_threads",
            "checkpoint_every",
            "checkpoint_dir",
            "keep_checkpoints",
            "eval_every",
        }
        return {f.name: repr(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in ignored}
