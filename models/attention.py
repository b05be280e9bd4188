"""open_clip's residual attention blocks on new tokens, with a key/value cache and pluggable products.

`self_attention_block` serves both the encoders (whole texts or images with int8 products, see
models.encoders) and CoCa decoding (one token at a time, see models.decoding); the cross-attention
pieces are CoCa's decoder blocks over precomputed image keys and values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor

from xmodal.models.int8 import FLOAT_PRODUCTS, Products, in_projection

if TYPE_CHECKING:
    from open_clip.transformer import ResidualAttentionBlock


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(rows, tokens, width) -> (rows, heads, tokens, head_width)."""
    rows, tokens, width = x.shape
    return x.view(rows, tokens, heads, width // heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(rows, heads, tokens, head_width) -> (rows, tokens, width)."""
    rows, heads, tokens, head_width = x.shape
    return x.transpose(1, 2).reshape(rows, tokens, heads * head_width)


def self_attention_block(
    block: ResidualAttentionBlock,
    x: Tensor,
    kv: Tensor,
    start: int,
    mask: Tensor | None,
    products: Products = FLOAT_PRODUCTS,
) -> Tensor:
    """open_clip's ResidualAttentionBlock (self-attention) on new tokens.

    kv (2, rows, heads, capacity, head_width) holds earlier keys and values and gets the new ones.
    """
    attn = block.attn
    end = start + x.shape[1]
    q, k, v = products.in_proj(attn, block.ln_1(x), slice(None)).chunk(3, dim=-1)
    kv[0, :, :, start:end] = split_heads(k, attn.num_heads)
    kv[1, :, :, start:end] = split_heads(v, attn.num_heads)
    out = F.scaled_dot_product_attention(
        split_heads(q, attn.num_heads), kv[0, :, :, :end], kv[1, :, :, :end], attn_mask=mask
    )
    x = x + block.ls_1(products.out_proj(attn, merge_heads(out)))
    return x + block.ls_2(products.mlp(block, block.ln_2(x)))


def cross_keys_values(block: ResidualAttentionBlock, image_embs: Tensor) -> tuple[Tensor, Tensor]:
    """A cross-attention block's keys and values over the image tokens, computed once per image."""
    attn, width = block.attn, block.attn.embed_dim
    image_embs = block.ln_1_kv(image_embs)
    keys = in_projection(attn, image_embs, slice(width, 2 * width))
    values = in_projection(attn, image_embs, slice(2 * width, None))
    return split_heads(keys, attn.num_heads), split_heads(values, attn.num_heads)


def cross_attention_block(
    block: ResidualAttentionBlock, x: Tensor, keys: Tensor, values: Tensor, products: Products = FLOAT_PRODUCTS
) -> Tensor:
    """open_clip's ResidualAttentionBlock (cross-attention) with precomputed image keys and values."""
    attn = block.attn
    rows, tokens, width = x.shape
    q = products.in_proj(attn, block.ln_1(x), slice(0, width))
    # Rows are grouped by image, so each image's rows share its keys without copying them.
    q = split_heads(q.reshape(keys.shape[0], -1, width), attn.num_heads)
    out = merge_heads(F.scaled_dot_product_attention(q, keys, values)).reshape(rows, tokens, width)
    x = x + block.ls_1(products.out_proj(attn, out))
    return x + block.ls_2(products.mlp(block, block.ln_2(x)))
