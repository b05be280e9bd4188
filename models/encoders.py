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

from xmodal.models.loading import LoadedModel, load_model
from xmodal.models.staging import StagingBuffer


class Encoder:
    """Image and text towers of one loaded open_clip model.

    int8_text=True (fp32 models on the CPU whose texts can be trimmed, see can_trim_padding): the text
    tower's matrix products read int8 copies of its weights (models.int8.Int8Products), 4x fewer
    bytes; a batch-1 query is bound by those bytes. Text vectors then move slightly from fp32's
    (bench/bench_text_encode.py measures how far).

    int8_images=True (fp32 open_clip vision transformers on the CPU): likewise for the image tower's
    blocks. Batches of images are bound by arithmetic, which the int8 kernels do faster (VNNI);
    patch embedding, pooling and projection stay fp32.
    """

    _staging: StagingBuffer | None = None  # made on the first batch (models.hf.HfEncoder skips __init__)

    def __init__(self, loaded: LoadedModel, *, int8_text: bool = False, int8_images: bool = False):
        self.loaded = loaded
        self.model = loaded.model
        self.device = loaded.device
        self.embed_dim = loaded.embed_dim
        self.trims_padding = can_trim_padding(self.model, loaded.tokenizer)  # decided once, not per query
        self.text_products = _int8_text_products(self.model, self.trims_padding) if int8_text else None
        self.image_products = _int8_image_products(self.model) if int8_images else None

    @classmethod
    def from_spec(
        cls, spec: str, device: str = "auto", *, int8_text: bool = False, int8_images: bool = False, **kwargs
    ) -> Encoder:
        """The one place a spec becomes an encoder (server, indexer, CLI): open_clip models here, Transformers
        checkpoints (`hf:org/repo`, a folder with a Transformers config.json) as models.hf.HfEncoder."""
        from xmodal.models import hf  # transformers itself is imported only when such a model loads

        if hf.is_hf_spec(spec):
            if int8_text or int8_images:
                raise ValueError(f"int8 text/image encoding supports open_clip models only, not {spec}")
            return hf.HfEncoder(hf.load_hf_model(spec, device, **kwargs))
        return cls(load_model(spec, device, **kwargs), int8_text=int8_text, int8_images=int8_images)

    @property
    def spec(self) -> str:
        return str(self.loaded.spec)

    @property
    def image_weights(self) -> str:
        """How images are encoded: "int8" (int8_images) or "fp32"; an index manifest records it."""
        return "int8" if self.image_products is not None else "fp32"

    @property
    def fingerprint(self) -> str:
        return self.loaded.fingerprint

    def preprocess_image(self, image: Image.Image) -> torch.Tensor:
        """An RGB PIL image to the model's input tensor (3, H, W), on the CPU."""
        return self.loaded.preprocess(image)

    def batch_pixels(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """Preprocessed (3, H, W) images as one batch for encode_images: stacked in the reused (pinned on
        CUDA) staging buffer when all are on the CPU, or on the model's device when some already are there
        (decoded on the GPU). A staged batch is valid until the next call: encode it before batching more."""
        if any(image.device != torch.device("cpu") for image in images):
            return torch.stack([image.to(self.device, non_blocking=True) for image in images])
        if self._staging is None:
            self._staging = StagingBuffer(self.device)
        return self._staging.stack(images)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.loaded.tokenizer(list(texts))

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> np.ndarray:
        """A batch (n, 3, H, W) of preprocessed images to (n, dim) unit vectors."""
        pixels = pixels.to(self.device, dtype=self.loaded.dtype, non_blocking=True)
        if self.image_products is not None:
            return _unit_rows(encode_image_int8(self.model.visual, pixels, self.image_products))
        return _unit_rows(self.model.encode_image(pixels, normalize=False))

    def encode_image_list(self, images: Sequence[torch.Tensor]) -> np.ndarray:
        """Preprocessed images to (n, dim) unit vectors, through batch_pixels (call it from one thread)."""
        if not images:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        return self.encode_images(self.batch_pixels(images))

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts to (n, dim) unit vectors; text past the context length is truncated."""
        tokens = self.tokenize(texts).to(self.device)
        if self.trims_padding:
            return _unit_rows(encode_text_trimmed(self.model, tokens, self.text_products))
        return _unit_rows(self.model.encode_text(tokens, normalize=False))

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Convenience: preprocess + encode decoded RGB images."""
        return self.encode_image_list([self.preprocess_image(img) for img in images])


def can_trim_padding(model: torch.nn.Module, tokenizer) -> bool:
    """True when a text batch can be cut after its longest text without changing the embeddings:
        causal attention (nothing attends forward, so padding cannot reach earlier positions), pooling at
        the end-of-text token or at CoCa's class token, and 0 as the pad id (open_clip's own tokenizer, or a
    model folder's TrainedTokenizer).
        A 4-word query then costs ~8 positions instead of 77: about 10x less text-tower compute."""
    import open_clip

    from xmodal.models.text_tokenizer import TrainedTokenizer

    if not isinstance(tokenizer, open_clip.tokenizer.SimpleTokenizer | TrainedTokenizer):
        return False
    text = getattr(model, "text", None)
    if text is not None:  # open_clip.transformer.TextTransformer (custom text towers, CoCa)
        if getattr(text, "attn_mask", None) is None or getattr(text, "use_pad_mask", True):
            return False
        if getattr(text, "cls_emb", None) is not None:
            return getattr(text, "pad_id", None) == 0 and hasattr(text, "_build_additive_mask")
        return getattr(text, "pool_type", None) == "argmax"
    return (
        getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", None) == "argmax"
        and hasattr(model, "positional_embedding")
        and hasattr(model, "transformer")
    )


def _text_tower(model: torch.nn.Module) -> torch.nn.Module:
    """open_clip's TextTransformer (custom text towers, CoCa), or the CLIP model holding its text attributes."""
    text = getattr(model, "text", None)
    return text if text is not None else model


def _int8_text_products(model: torch.nn.Module, trims_padding: bool):
    from xmodal.models.int8 import Int8Products

    if not trims_padding:
        raise ValueError("int8 text encoding supports open_clip's own causal text towers only")
    return Int8Products.for_blocks(list(_text_tower(model).transformer.resblocks))


def _int8_image_products(model: torch.nn.Module):
    from open_clip.transformer import VisionTransformer

    from xmodal.models.int8 import Int8Products

    visual = getattr(model, "visual", None)
    # _embeds and _pool are open_clip 3's steps of VisionTransformer.forward around its blocks.
    if not (isinstance(visual, VisionTransformer) and hasattr(visual, "_embeds") and hasattr(visual, "_pool")):
        raise ValueError("int8 image encoding supports open_clip's own vision transformers only")
    return Int8Products.for_blocks(list(visual.transformer.resblocks))


def encode_image_int8(visual: torch.nn.Module, pixels: torch.Tensor, products) -> torch.Tensor:
    """open_clip's VisionTransformer.forward (the pooled, projected features) with the blocks' matrix
    products from Int8Products, run by models.attention.self_attention_block."""
    x = _int8_blocks(visual.transformer, visual._embeds(pixels), None, products)
    pooled, _ = visual._pool(x)
    return pooled @ visual.proj if visual.proj is not None else pooled


def encode_text_trimmed(model: torch.nn.Module, tokens: torch.Tensor, int8=None) -> torch.Tensor:
    """model.encode_text over the first columns of `tokens` only (see can_trim_padding): open_clip's
    own steps, with positions and the causal mask sliced to the kept length. `int8`: Int8Products for
    the tower's blocks, run by models.attention.self_attention_block instead of open_clip's blocks."""
    from open_clip.transformer import text_global_pool

    text = getattr(model, "text", None)
    tower = _text_tower(model)
    cls_emb = getattr(text, "cls_emb", None)
    # Keep one pad column after the longest text: CoCa's legacy class-token mask lets the class token
    # see the position after end-of-text, and must not let it see itself (as with full padding).
    extra = 2 if cls_emb is not None else 1
    last = int((tokens != 0).any(dim=0).nonzero().max()) if tokens.any() else 0
    length = min(last + extra, tokens.shape[1])
    tokens = tokens[:, :length]
    cast_dtype = tower.transformer.get_cast_dtype()
    x = tower.token_embedding(tokens).to(cast_dtype) + tower.positional_embedding[:length].to(cast_dtype)
    mask = tower.attn_mask
    if cls_emb is None:
        mask = mask[:length, :length]
    else:  # the class token goes after the kept columns, at the position it has after full padding
        cls = (cls_emb + tower.positional_embedding[-1]).to(cast_dtype)
        x = torch.cat([x, cls.expand(x.shape[0], 1, -1)], dim=1)
        mask = mask[: length + 1, : length + 1].unsqueeze(0) + tower._build_additive_mask(tokens, length + 1, x.dtype)
    x = tower.transformer(x, attn_mask=mask) if int8 is None else _int8_blocks(tower.transformer, x, mask, int8)
    if cls_emb is not None:
        x = tower.ln_final(x[:, -1])
    else:
        x = text_global_pool(tower.ln_final(x), tokens, tower.pool_type if text is not None else tower.text_pool_type)
    if isinstance(tower.text_projection, torch.nn.Linear):
        return tower.text_projection(x)
    return x @ tower.text_projection if tower.text_projection is not None else x


def _int8_blocks(transformer: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor | None, products) -> torch.Tensor:
    """The tower's blocks over whole texts or images (no mask) with int8 products. open_clip hands
    nn.MultiheadAttention an additive mask of (length, length), or (rows x heads, length, length)
    with CoCa's padding mask; scaled_dot_product_attention takes it as (rows, heads, length, length)."""
    from xmodal.models.attention import self_attention_block

    rows, length, _ = x.shape
    heads = transformer.resblocks[0].attn.num_heads
    if mask is not None and mask.dim() == 3:
        mask = mask.view(rows, heads, length, length)
    for block in transformer.resblocks:
        keys_values = x.new_empty(2, rows, heads, length, block.attn.head_dim)  # filled by the block
        x = self_attention_block(block, x, keys_values, 0, mask, products)
    return x


def _unit_rows(features: torch.Tensor) -> np.ndarray:
    return F.normalize(features.float(), dim=-1).cpu().numpy()
