"""Which examples make up each step's batch: a pure function of (seed, step).

Because nothing depends on how many batches were drawn before, a run resumed at step s
sees exactly the batches an uninterrupted run would have seen from s on.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from functools import lru_cache

import torch

# The end of a sample key whose example is the binding twin of the one before it in the batch
# (the same scene with one attribute swapped between two objects; ExampleDataset renders it).
TWIN = ":twin"


class StepBatches(torch.utils.data.Sampler[list[tuple[int, str]]]):
    """Batches for steps start+1 .. end: (dataset position, per-sample key) pairs.

    Positions run through one shuffled permutation per epoch; a batch may straddle two epochs.
    With `twin_fraction`, each odd batch slot holds, with that probability, the binding twin of
    the slot before it (its dataset position, its key ending in TWIN) instead of a new position.
    """

    def __init__(self, size: int, batch_size: int, seed: int, start: int, end: int, twin_fraction: float = 0.0):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.start, self.end = start, end
        self.twin_fraction = twin_fraction

    def __len__(self) -> int:
        return self.end - self.start

    def __iter__(self) -> Iterator[list[tuple[int, str]]]:
        for step in range(self.start + 1, self.end + 1):
            yield self.batch(step)

    def batch(self, step: int) -> list[tuple[int, str]]:
        first = (step - 1) * self.batch_size
        batch = [(self._position(first + j), f"{self.seed}:{step}:{j}") for j in range(self.batch_size)]
        if self.twin_fraction:
            draw = random.Random(f"{self.seed}:{step}:twins")
            for j in range(1, self.batch_size, 2):
                if draw.random() < self.twin_fraction:
                    batch[j] = (batch[j - 1][0], f"{self.seed}:{step}:{j}{TWIN}")
        return batch

    def _position(self, n: int) -> int:
        epoch, offset = divmod(n, self.size)
        return int(_permutation(self.size, self.seed, epoch)[offset])


@lru_cache(maxsize=2)
def _permutation(size: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(size, generator=generator)
