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
        if self._trims_padding:
            return _unit_rows(_encode_text_trimmed(self.model, tokens))
        return _unit_rows(self.model.encode_text(tokens, normalize=False))

    @property
    def _trims_padding(self) -> bool:
        return can_trim_padding(self.model, self.loaded.tokenizer)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Convenience: preprocess + encode decoded RGB images."""
        if not images:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        return self.encode_images(torch.stack([self.preprocess_image(img) for img in images]))


def can_trim_padding(model: torch.nn.Module, tokenizer) -> bool:
    """True when the text tower's output at the end-of-text token cannot depend on the padding after it:
    causal attention, no class token appended after the padding (CoCa appends one), pooling at the
    end-of-text token, and 0 as the pad id (open_clip's own tokenizer). Then a batch can be cut after its
    longest text: a 4-word query costs ~8 positions instead of 77 (about 10x less text-tower compute)."""
    import open_clip

    if not isinstance(tokenizer, open_clip.tokenizer.SimpleTokenizer):
        return False
    text = getattr(model, "text", None)
    if text is not None:  # custom text tower (open_clip.transformer.TextTransformer)
        return (getattr(text, "cls_emb", 1) is None and getattr(text, "attn_mask", None) is not None
                and not getattr(text, "use_pad_mask", True) and getattr(text, "pool_type", None) == "argmax")
    return (getattr(model, "attn_mask", None) is not None and getattr(model, "text_pool_type", None) == "argmax"
            and hasattr(model, "positional_embedding") and hasattr(model, "transformer"))


def _encode_text_trimmed(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """model.encode_text over the columns up to the batch's last non-pad token (see can_trim_padding):
    open_clip's own steps, with positions and the causal mask sliced to that length."""
    from open_clip.transformer import text_global_pool

    length = int((tokens != 0).any(dim=0).nonzero().max()) + 1 if tokens.any() else 1
    tokens = tokens[:, :length]
    custom = getattr(model, "text", None) is not None
    tower = model.text if custom else model  # TextTransformer, or CLIP's own text attributes
    cast_dtype = tower.transformer.get_cast_dtype()
    x = tower.token_embedding(tokens).to(cast_dtype) + tower.positional_embedding[:length].to(cast_dtype)
    x = tower.transformer(x, attn_mask=tower.attn_mask[:length, :length])
    x = text_global_pool(tower.ln_final(x), tokens, tower.pool_type if custom else tower.text_pool_type)
    if isinstance(tower.text_projection, torch.nn.Linear):
        return tower.text_projection(x)
    return x @ tower.text_projection if tower.text_projection is not None else x


def _unit_rows(features: torch.Tensor) -> np.ndarray:
    return F.normalize(features.float(), dim=-1).cpu().numpy()
