"""One reused host buffer that each batch of preprocessed images is stacked into on its way to the model.

On CUDA the buffer is pinned (page-locked): the copy to the GPU runs at full bus speed and without a
hidden staging copy, and pinning once beats a fresh torch.stack (a new allocation) per batch. On the CPU
it is a plain tensor, so the same code runs, and is tested, there.

A batch is a view of the buffer: valid until the next `stack`. Encoder.encode_images returns after its
result is on the host, so the asynchronous copy out of the buffer has finished by the next batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class StagingBuffer:
    """Stacks (C, H, W) tensors into one buffer that is reused while shapes and dtype stay the same and
    the batch fits; a larger batch or another shape allocates a new one (the first batch is the largest)."""

    def __init__(self, device: torch.device | str):
        self.pinned = torch.device(device).type == "cuda" and torch.cuda.is_available()
        self.buffer: torch.Tensor | None = None
        self.allocations = 0

    def stack(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """The images as one (n, C, H, W) batch in the buffer (a view of its first n rows)."""
        if not images:
            raise ValueError("no images to stack")
        first = images[0]
        buffer = self.buffer
        if (
            buffer is None
            or buffer.shape[1:] != first.shape
            or buffer.dtype != first.dtype
            or len(buffer) < len(images)
        ):
            buffer = torch.empty((len(images), *first.shape), dtype=first.dtype, pin_memory=self.pinned)
            self.buffer = buffer
            self.allocations += 1
        batch = buffer[: len(images)]
        torch.stack(list(images), out=batch)
        return batch
