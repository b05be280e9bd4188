"""int8 image encoding (Encoder(int8_images=True)): open_clip's vision transformer with int8 products stays close to fp32."""

from __future__ import annotations

import copy
import dataclasses

import open_clip
import pytest
import torch

from xmodal.models.encoders import Encoder


@pytest.mark.parametrize("tower", ["clip", "coca-attentional-pool"])
def test_int8_image_encoding_stays_close_to_fp32(tiny_coca_dir, tower):
    encoder = Encoder.from_spec(f"local-dir:{tiny_coca_dir}" if tower != "clip" else "xmodal-tiny-clip", "cpu")
    int8 = Encoder(encoder.loaded, int8_images=True)
    torch.manual_seed(0)
    pixels = torch.randn(6, 3, 32, 32)
    reference = torch.from_numpy(encoder.encode_images(pixels))
    got = torch.from_numpy(int8.encode_images(pixels))
    assert got.shape == reference.shape
    assert torch.allclose(got.norm(dim=1), torch.ones(6), atol=1e-5)
    assert (got * reference).sum(dim=1).min() > 0.99
    assert not torch.allclose(got, reference, atol=1e-5)  # the int8 path is really taken
    # Each image's vector does not depend on its batch beyond the per-call activation scale.
    alone = torch.cat([torch.from_numpy(int8.encode_images(pixels[i : i + 1])) for i in range(6)])
    assert (alone * reference).sum(dim=1).min() > 0.99


def test_int8_image_encoding_is_refused_where_it_cannot_run():
    encoder = Encoder.from_spec("xmodal-tiny-clip", "cpu")
    with pytest.raises(ValueError, match="fp32 model on the CPU"):
        Encoder(dataclasses.replace(encoder.loaded, model=copy.deepcopy(encoder.model).half()), int8_images=True)
    torch.manual_seed(0)
    resnet = open_clip.create_model("RN50").eval()  # a ModifiedResNet image tower
    with pytest.raises(ValueError, match="vision transformers only"):
        Encoder(dataclasses.replace(encoder.loaded, model=resnet), int8_images=True)
