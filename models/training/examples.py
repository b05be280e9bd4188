"""Training examples: an image, a contrastive text and a decoder target, ready to batch.

Each draw picks a contrastive text (a caption) and a decoder target (a caption, or a
question/answer text). Choices are seeded by the sample key the batch plan hands out,
so an example is the same in every process and after a resume.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch

from models.training.sources import CsvSource, WorldSource


def vqa_text(question: str, answer: str) -> str:
    """How a question/answer pair is written as a decoder target; a VQA decoder prompts with
    `vqa_text(question, "")` and reads the continuation."""
    return f"question: {question} answer: {answer}".rstrip()


class ExampleDataset(torch.utils.data.Dataset):
    """Maps a (position, sample key) pair from the batch plan to (image tensor, text, decoder text)."""

    def __init__(self, source: WorldSource | CsvSource, preprocess: Callable, vqa_fraction: float):
        self.source = source
        self.preprocess = preprocess
        self.vqa_fraction = vqa_fraction

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item: tuple[int, str]) -> tuple[torch.Tensor, str, str]:
        index, key = item
        image, texts = self.source.load(index)
        rng = random.Random(key)
        caption = rng.choice(texts.captions)
        if texts.questions and rng.random() < self.vqa_fraction:
            target = vqa_text(*rng.choice(texts.questions))
        else:
            target = rng.choice(texts.decoder_captions)
        return self.preprocess(image), caption, target


class Collate:
    """Stacks images and tokenises both texts (a class, so DataLoader workers can pickle it)."""

    def __init__(self, tokenizer: Callable[[Sequence[str]], torch.Tensor]):
        self.tokenizer = tokenizer

    def __call__(self, batch: list[tuple[torch.Tensor, str, str]]) -> tuple[torch.Tensor, ...]:
        images, captions, targets = zip(*batch)
        return torch.stack(images), self.tokenizer(list(captions)), self.tokenizer(list(targets))
