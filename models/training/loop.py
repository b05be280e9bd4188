"""train(): the training loop that ties data, objective, optimiser and checkpoints together."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from torch import nn
from tqdm.auto import tqdm

from xmodal.models.model_dir import save_model_dir
from xmodal.models.training.batches import StepBatches
from xmodal.models.training.checkpoint import TrainingState, latest_checkpoint, load_checkpoint, save_checkpoint
from xmodal.models.training.config import TrainConfig
from xmodal.models.training.datasets import build_source
from xmodal.models.training.examples import Collate, ExampleDataset
from xmodal.models.training.objective import Objective
from xmodal.models.training.optim import build_optimizer, build_schedule
from xmodal.models.training.starting_model import load_starting_model
from xmodal.models.training.tokenizer import config_tokenizer, model_languages

logger = logging.getLogger(__name__)

# Called with the model (in eval mode, under no_grad) and the step; may return metrics to record.
Evaluate = Callable[[nn.Module, int], Mapping[str, float] | None]


@dataclass(frozen=True)
class TrainResult:
    output_dir: Path  # load with models.loading.load_model(f"local-dir:{output_dir}")
    steps: int
    resumed_from: int  # 0 for a fresh run
    history: tuple[dict[str, float], ...]  # per step: step, loss, contrastive_loss, [caption_loss], lr
    evaluations: tuple[dict[str, float], ...]  # step plus whatever `evaluate` returned
    seconds: float  # training time of this run: no set-up, no evaluation
    samples_per_second: float
    eval_seconds: float = 0.0  # time spent in `evaluate` during this run


def train(config: TrainConfig, progress: bool = True, evaluate: Evaluate | None = None) -> TrainResult:
    """Train (or resume training) as configured, then write the model directory.

    A rerun with the same settings resumes from the latest checkpoint. Exceptions from
    `evaluate` propagate, after the checkpoint for that step has been written.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(training_threads(config))
    try:
        return _train(config, progress, evaluate)
    finally:
        torch.set_num_threads(threads)


def training_threads(config: TrainConfig) -> int:
    """config.cpu_threads, or on a CPU the cores its data workers leave free (see TrainConfig)."""
    if config.cpu_threads is not None:
        return config.cpu_threads
    if _device(config).type != "cpu":
        return torch.get_num_threads()
    return max(1, len(os.sched_getaffinity(0)) - config.num_workers)


def _device(config: TrainConfig) -> torch.device:
    return torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _train(config: TrainConfig, progress: bool, evaluate: Evaluate | None) -> TrainResult:
    device = _device(config)
    autocast, scaler = _mixed_precision(config.precision, device)
    _seed_everything(config.seed)

    start = load_starting_model(
        config.model,
        config.pretrained,
        device,
        config.vision_position_std,
        config_tokenizer(config),
        config.model_overrides,
    )
    model = start.model
    model.train()
    preprocess = image_transform_v2(PreprocessCfg(**start.preprocess_cfg), is_train=False)
    dataset = ExampleDataset(
        build_source(config.data),
        preprocess,
        config.vqa_fraction,
        config.decoder_targets,
        config.query_fraction,
        config.contrastive_texts,
        config.hard_negatives,
        config.vqa_answers_only,
        config.swap_negatives,
        config.qa_targets,
        config.presence_weight,
    )
    vocab_size = _vocab_size(model)
    # Sparse gradients for the vocabulary-sized parameters (VocabAdamW takes them): on a CPU, dense
    # ones cost more memory traffic than the small model's whole text tower. On a GPU they are
    # cheap, and sparse ones are untested there (no GPU in this project's CI).
    objective = Objective(
        model,
        config.contrastive_loss_weight,
        config.caption_loss_weight,
        start.tokenizer,
        sparse_gradients=vocab_size is not None and device.type == "cpu",
        answer_weight=config.answer_loss_weight,
        attention_weight=config.attention_loss_weight,
        query_weight=config.image_to_query_weight,
    )
    optimizer = build_optimizer(model, config, vocab_size)
    schedule = build_schedule(optimizer, config)
    stateful = {"state_dict": model, "optimizer": optimizer, "schedule": schedule, "scaler": scaler}

    checkpoints = config.resolved_checkpoint_dir
    state = TrainingState(step=0, history=[], evaluations=[])
    if (path := latest_checkpoint(checkpoints)) is not None:
        state = load_checkpoint(path, config.trajectory(), **stateful)
        logger.info("resuming from %s (step %d)", path, state.step)
    resumed_from = state.step

    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=StepBatches(
            len(dataset), config.batch_size, config.seed, state.step, config.steps, config.twin_fraction
        ),
        collate_fn=Collate(start.tokenizer),
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
    )
    began = time.perf_counter()
    eval_seconds = 0.0
    rate = _Rate()
    with tqdm(total=config.steps, initial=state.step, disable=not progress, unit="step", dynamic_ncols=True) as bar:
        for batch in loader:
            state.step += 1
            lr = schedule.get_last_lr()[0]
            losses = _train_step(
                model,
                objective,
                optimizer,
                scaler,
                autocast,
                config.grad_clip_norm,
                batch.images.to(device, non_blocking=True),
                batch.texts.to(device),
                batch.targets.to(device),
                batch.positives.to(device),
                batch.complete.to(device),
                batch.taught.to(device),
                batch.answers.to(device),
                None if batch.where is None else batch.where.to(device),
            )
            schedule.step()
            state.history.append({"step": state.step, **losses, "lr": lr})
            bar.update(1)
            bar.set_postfix(
                {
                    **{k.removesuffix("_loss"): f"{v:.3f}" for k, v in losses.items()},
                    "samples/s": f"{rate.update(config.batch_size):.0f}",
                }
            )

            last = state.step == config.steps
            # Checkpoint before evaluating, so a failing evaluation never costs training progress.
            if state.step % config.checkpoint_every == 0 or last:
                save_checkpoint(checkpoints, config.keep_checkpoints, state, config.trajectory(), **stateful)
            if evaluate is not None and (last or (config.eval_every and state.step % config.eval_every == 0)):
                eval_began = time.perf_counter()
                metrics = _evaluate(evaluate, model, state.step)
                eval_seconds += time.perf_counter() - eval_began
                state.evaluations.append({"step": state.step, **metrics})
                bar.write(f"step {state.step}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
                rate.last = time.perf_counter()  # the evaluation is not training time
    seconds = time.perf_counter() - began - eval_seconds

    save_model_dir(
        model,
        start.model_cfg,
        start.preprocess_cfg,
        Path(config.output_dir),
        tokenizer=start.tokenizer,
        languages=model_languages(config.data),
    )
    steps_run = state.step - resumed_from
    return TrainResult(
        output_dir=Path(config.output_dir),
        steps=state.step,
        resumed_from=resumed_from,
        history=tuple(state.history),
        evaluations=tuple(state.evaluations),
        seconds=seconds,
        samples_per_second=steps_run * config.batch_size / seconds if seconds > 0 else 0.0,
        eval_seconds=eval_seconds,
    )


def _train_step(
    model,
    objective,
    optimizer,
    scaler,
    autocast,
    clip_norm,
    images,
    texts,
    targets,
    positives=None,
    complete=None,
    taught=None,
    answers=None,
    where=None,
) -> dict[str, float]:
    optimizer.zero_grad(set_to_none=True)
    with autocast():
        losses = objective(model, images, texts, targets, positives, complete, taught, answers, where)
    scaler.scale(losses["loss"]).backward()
    if clip_norm is not None:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    scaler.step(optimizer)
    scaler.update()
    with torch.no_grad():
        # As open_clip's trainer does: a temperature above 100 destabilises the contrastive loss.
        model.logit_scale.clamp_(0, np.log(100))
    return {k: v.item() for k, v in losses.items()}


def _evaluate(evaluate: Evaluate, model: nn.Module, step: int) -> dict[str, float]:
    model.eval()
    try:
        with torch.no_grad():
            return dict(evaluate(model, step) or {})
    finally:
        model.train()


def _mixed_precision(precision: str, device: torch.device) -> tuple[Callable, torch.amp.GradScaler]:
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 autocast needs CUDA; use fp32 (or bf16) on CPU")
    # The scaler only acts for fp16, whose gradients underflow; otherwise it is a pass-through.
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    if precision == "fp32":
        return contextlib.nullcontext, scaler
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


def _vocab_size(model: nn.Module) -> int | None:
    embeddings = [m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)]
    return embeddings[0] if len(embeddings) == 1 else None


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _Rate:
    """Samples per second over recent steps, so the bar reflects current speed."""

    def __init__(self, smoothing: float = 0.9):
        self.smoothing, self.last = smoothing, time.perf_counter()
        self.value: float | None = None

    def update(self, samples: int) -> float:
        now = time.perf_counter()
        current = samples / max(now - self.last, 1e-9)
        self.last = now
        value = current if self.value is None else self.smoothing * self.value + (1 - self.smoothing) * current
        self.value = value
        return value
