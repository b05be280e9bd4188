"""The matrix products of a transformer block: from the model's own float weights, or from int8 copies.

`Products` runs a block's projections, MLP and vocabulary projection with the model's weights;
`Int8Products` runs the same products from per-channel int8 copies with torch's dynamic-quantization
CPU kernels (about 4x fewer bytes a product). The attention blocks in models.attention take either,
so the text and image encoders and CoCa decoding share one implementation.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from open_clip.transformer import MultimodalTransformer, ResidualAttentionBlock, TextTransformer


def in_projection(attn: nn.MultiheadAttention, x: Tensor, part: slice) -> Tensor:
    """Part of nn.MultiheadAttention's packed q/k/v input projection."""
    bias = attn.in_proj_bias[part] if attn.in_proj_bias is not None else None
    return F.linear(x, attn.in_proj_weight[part], bias)


class Products:
    """The matrix products a block runs, with the model's own weights."""

    def in_proj(self, attn: nn.MultiheadAttention, x: Tensor, part: slice) -> Tensor:
        return in_projection(attn, x, part)

    def out_proj(self, attn: nn.MultiheadAttention, x: Tensor) -> Tensor:
        return attn.out_proj(x)

    def mlp(self, block: ResidualAttentionBlock, x: Tensor) -> Tensor:
        return block.mlp(x)

    def vocab(self, decoder: MultimodalTransformer, x: Tensor) -> Tensor:
        return x @ decoder.text_projection


FLOAT_PRODUCTS = Products()


class Int8Products(Products):
    """The same products from int8 weight copies (fbgemm/onednn dynamic quantization, CPU).

    Covers every weight a step reads: self-attention q/k/v, cross-attention q, output
    projections, MLPs and the vocabulary projection. The image keys and values of cross
    attention, computed once per image, keep the model's weights.
    """

    def __init__(self, text: TextTransformer, decoder: MultimodalTransformer):
        self._setup(decoder.text_projection)
        for block in [*text.transformer.resblocks, *decoder.resblocks]:
            self._pack(block.attn, "qkv", block.attn.in_proj_weight, block.attn.in_proj_bias)
        for block in decoder.cross_attn:
            width, bias = block.attn.embed_dim, block.attn.in_proj_bias
            self._pack(block.attn, "q", block.attn.in_proj_weight[:width], bias[:width] if bias is not None else None)
        self._pack_outputs_and_mlps([*text.transformer.resblocks, *decoder.resblocks, *decoder.cross_attn])
        self._pack(decoder, "vocab", decoder.text_projection.t(), None)

    @classmethod
    def for_blocks(cls, blocks: Sequence[ResidualAttentionBlock]) -> Int8Products:
        """int8 copies of self-attention blocks' weights only: a text tower encoding whole texts."""
        products = cls.__new__(cls)
        products._setup(blocks[0].attn.in_proj_weight)
        for block in blocks:
            products._pack(block.attn, "qkv", block.attn.in_proj_weight, block.attn.in_proj_bias)
        products._pack_outputs_and_mlps(blocks)
        return products

    def _setup(self, weight: Tensor) -> None:
        if weight.device.type != "cpu" or weight.dtype != torch.float32:
            raise ValueError("int8 weight copies need an fp32 model on the CPU")
        self.packed: dict[tuple[int, str], object] = {}
        # Without VNNI the x86 kernels add u8 x s8 pairs in saturating int16: 7-bit activations keep
        # that exact. VNNI accumulates in int32, so activations keep all 8 bits (about 40% less error).
        self.reduce_range = not _cpu_has_vnni()

    def _pack_outputs_and_mlps(self, blocks: Sequence[ResidualAttentionBlock]) -> None:
        for block in blocks:
            self._pack(block.attn, "out", block.attn.out_proj.weight, block.attn.out_proj.bias)
            mlp = block.mlp
            layers = dict(mlp.named_children()) if isinstance(mlp, nn.Sequential) else {}
            c_fc, c_proj = layers.get("c_fc"), layers.get("c_proj")
            if not (
                list(layers) == ["c_fc", "gelu", "c_proj"]
                and isinstance(c_fc, nn.Linear)
                and isinstance(c_proj, nn.Linear)
            ):
                raise ValueError(f"int8 weight copies support open_clip's c_fc/gelu/c_proj MLP, not {mlp}")
            self._pack(mlp, "c_fc", c_fc.weight, c_fc.bias)
            self._pack(mlp, "c_proj", c_proj.weight, c_proj.bias)

    def _pack(self, module: nn.Module, name: str, weight: Tensor, bias: Tensor | None) -> None:
        """A copy of `weight` (out, in) as int8 with one scale per output row, packed for the CPU kernels."""
        weight = weight.detach().float().contiguous()
        scales = (weight.abs().amax(dim=1) / 127).clamp(min=1e-12).double()
        zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
        bias = bias.detach().float().contiguous() if bias is not None else None
        try:
            with warnings.catch_warnings():
                # torch marks its quantized tensor types deprecated; these kernels are what we measured.
                warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
                qweight = torch.quantize_per_channel(weight, scales, zero_points, 0, torch.qint8)
                self.packed[id(module), name] = torch.ops.quantized.linear_prepack(qweight, bias)
        except (AttributeError, RuntimeError) as exc:
            raise ValueError(
                f"int8 weight copies need torch's quantized CPU kernels, which failed here: {exc}"
            ) from exc

    def _linear(self, module: nn.Module, name: str, x: Tensor) -> Tensor:
        packed = self.packed[id(module), name]
        return torch.ops.quantized.linear_dynamic(x.contiguous(), packed, self.reduce_range)

    def in_proj(self, attn: nn.MultiheadAttention, x: Tensor, part: slice) -> Tensor:
        if part == slice(None):
            return self._linear(attn, "qkv", x)
        if part == slice(0, attn.embed_dim) and (id(attn), "q") in self.packed:
            return self._linear(attn, "q", x)
        return in_projection(attn, x, part)

    def out_proj(self, attn: nn.MultiheadAttention, x: Tensor) -> Tensor:
        return self._linear(attn, "out", x)

    def mlp(self, block: ResidualAttentionBlock, x: Tensor) -> Tensor:
        mlp = block.mlp
        return self._linear(mlp, "c_proj", mlp.gelu(self._linear(mlp, "c_fc", x)))

    def vocab(self, decoder: MultimodalTransformer, x: Tensor) -> Tensor:
        return self._linear(decoder, "vocab", x)


def _cpu_has_vnni() -> bool:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags
