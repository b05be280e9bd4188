"""The encoder contract: CPU preprocessing, device encoding, normalised float32 out.

`preprocess_image` runs on the CPU (decode workers, request threads); `encode_*`
runs the model on its device. Embeddings are L2-normalised exactly once, here,
in float32 (open_clip's CLIP and CoCa disagree on their default; we never use it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from models.loading import LoadedModel, load_model


class Encoder:
    """Image and text towers of one loaded open_clip model."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.model = loaded.model
        self.device = loaded.device
        self.embed_dim = loaded.embed_dim

    @classmethod
    def from_spec(cls, spec: str, device: str = "auto", **kwargs) -> "Encoder":
        return cls(load_model(spec, device, **kwargs))

    @property
    def spec(self) -> str:
        return str(self.loaded.spec)

    @property
    def fingerprint(self) -> str:
        return self.loaded.fingerprint

    def preprocess_image(self, image: Image.Image) -> torch.Tensor:
        """An RGB PIL image to the model's input tensor (3, H, W), on the CPU."""
        return self.loaded.preprocess(image)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.loaded.tokenizer(list(texts))

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> np.ndarray:
        """A batch (n, 3, H, W) of preprocessed images to (n, dim) unit vectors."""
        pixels = pixels.to(self.device, dtype=self.loaded.dtype, non_blocking=True)
        return _unit_rows(self.model.encode_image(pixels, normalize=False))

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts to (n, dim) unit vectors; text past the context length is truncated."""
        tokens = self.tokenize(texts).to(self.device)
        return _unit_rows(self.model.encode_text(tokens, normalize=False))

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Convenience: preprocess + encode decoded RGB images."""
        if not images:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        return self.encode_images(torch.stack([self.preprocess_image(img) for img in images]))


def _unit_rows(features: torch.Tensor) -> np.ndarray:
    return F.normalize(features.float(), dim=-1).cpu().numpy()
