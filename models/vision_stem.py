"""A small convolutional stem in place of a vision transformer's linear patch embedding.

open_clip's ViT embeds each patch with one linear map (`visual.conv1`, a stride-patch conv). On
the generated world that was the bottleneck: a linear probe read an object's shape from its
patch token 51% of the time, while a small MLP on the raw patch pixels read it every time. A few
3 x 3 convolutions with stride 2, ending in a conv whose kernel and stride cover what is left of
the patch, give the same width x grid x grid output, so everything after `conv1` is unchanged.

open_clip knows nothing of the stem: an architecture asks for it with the key `STEM_KEY` beside
open_clip's own keys in its model config, and `split_model_cfg` pops it before open_clip sees the
config; `add_vision_stem` then swaps the stem in, before any weights are loaded.
"""

from __future__ import annotations

from typing import Any

from torch import nn

STEM_KEY = "xmodal_vision_stem"  # {"channels": [c1, c2, ...]}: one stride-2 3x3 conv per entry


def split_model_cfg(model_cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the config open_clip builds, the stem's config or None), without changing `model_cfg`."""
    plain = {key: value for key, value in model_cfg.items() if key != STEM_KEY}
    return plain, model_cfg.get(STEM_KEY)


class ConvStem(nn.Sequential):
    """3 x 3 convolutions of stride 2 (GELU after each), then a linear conv that covers the rest
    of a `patch_size` patch: (B, 3, H, W) -> (B, width, H / patch_size, W / patch_size).

    He-initialised, so the output keeps about the input's scale (with PyTorch's default init it
    shrank 60-fold over four convs, and the position embeddings drowned the image under ln_pre).
    """

    def __init__(self, width: int, patch_size: int, channels: list[int]):
        rest = patch_size
        layers: list[nn.Module] = []
        previous = 3
        for out in channels:
            if rest % 2:
                raise ValueError(f"a stem of {len(channels)} stride-2 convs does not divide patch size {patch_size}")
            layers += [nn.Conv2d(previous, out, 3, stride=2, padding=1), nn.GELU()]
            previous, rest = out, rest // 2
        layers.append(nn.Conv2d(previous, width, rest, stride=rest, bias=False))
        super().__init__(*layers)
        for layer in self:
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)


def add_vision_stem(model: nn.Module, stem_cfg: dict[str, Any] | None) -> nn.Module:
    """Replace the ViT's patch embedding `model.visual.conv1` by a ConvStem (no-op without a config)."""
    if not stem_cfg:
        return model
    visual = getattr(model, "visual", None)
    conv1 = getattr(visual, "conv1", None)
    if visual is None or not isinstance(conv1, nn.Conv2d):
        raise ValueError(f"{STEM_KEY} needs an open_clip vision transformer (visual.conv1)")
    patch = conv1.kernel_size[0]
    stem = ConvStem(conv1.out_channels, patch, list(stem_cfg["channels"]))
    visual.conv1 = stem.to(device=conv1.weight.device, dtype=conv1.weight.dtype)
    return model
