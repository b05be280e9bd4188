"""Training checkpoints: everything a rerun needs to continue as if it had never stopped.

Files are `step-0000500.pt` under the checkpoint directory, written to a temporary name
and renamed, so a crash mid-write never leaves a truncated latest checkpoint. The model
weights sit under "state_dict", so open_clip can also load a checkpoint as `pretrained`.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xmodal.models.errors import Conflict

PATTERN = "step-*.pt"


class CheckpointMismatchError(Conflict, RuntimeError):
    """A checkpoint was written with settings that would train different weights."""


@dataclass
class TrainingState:
    step: int
    history: list[dict[str, float]]
    evaluations: list[dict[str, float]]


def save_checkpoint(
    directory: Path, keep: int, state: TrainingState, trajectory: dict[str, str], **stateful: Any
) -> Path:
    """Write model/optimiser/... (each with a state_dict()) plus RNG state; prune old checkpoints."""
    directory.mkdir(parents=True, exist_ok=True)
    payload = {name: obj.state_dict() for name, obj in stateful.items()}
    payload.update(
        step=state.step,
        history=state.history,
        evaluations=state.evaluations,
        trajectory=trajectory,
        rng=_rng_state(),
    )
    path = directory / f"step-{state.step:07d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    for old in sorted(directory.glob(PATTERN))[:-keep]:
        old.unlink()
    return path


def latest_checkpoint(directory: Path) -> Path | None:
    found = sorted(directory.glob(PATTERN)) if directory.is_dir() else []
    return found[-1] if found else None


def load_checkpoint(path: Path, trajectory: dict[str, str], **stateful: Any) -> TrainingState:
    """Restore state_dicts into `stateful` objects and the RNGs; returns where training stood."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    changed = {
        k for k in trajectory.keys() | payload["trajectory"].keys() if trajectory.get(k) != payload["trajectory"].get(k)
    }
    if changed:
        raise CheckpointMismatchError(
            f"{path} was written with different settings ({', '.join(sorted(changed))}); "
            "restore them or use another checkpoint_dir"
        )
    for name, obj in stateful.items():
        obj.load_state_dict(payload[name])
    _set_rng_state(payload["rng"])
    return TrainingState(payload["step"], payload["history"], payload["evaluations"])


def _rng_state() -> dict[str, Any]:
    state = np.random.get_state(legacy=True)
    assert isinstance(state, tuple)  # legacy=True: (kind, keys, pos, has_gauss, gauss)
    kind, keys, pos, has_gauss, gauss = state
    return {
        "python": random.getstate(),
        # Plain lists, so the checkpoint loads with torch.load(weights_only=True).
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
