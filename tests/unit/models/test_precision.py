import pytest
import torch

from tests.conftest import TINY_CLIP
from xmodal.models.encoders import Encoder
from xmodal.models.precision import PRECISIONS, choose_dtype, precision_name


@pytest.mark.parametrize(
    ("device", "precision", "dtype"),
    [
        ("cuda", "auto", torch.float16),
        ("cuda:1", "auto", torch.float16),
        ("cpu", "auto", torch.float32),
        ("cuda", "bf16", torch.bfloat16),
        ("cuda", "fp32", torch.float32),
        ("cpu", "bf16", torch.bfloat16),
        ("cpu", "fp16", torch.float16),
    ],
)
def test_auto_is_half_on_cuda_and_fp32_elsewhere_and_an_explicit_choice_wins(device, precision, dtype):
    assert choose_dtype(torch.device(device), precision) == dtype
    assert choose_dtype(device, precision) == dtype  # a device string too (no CUDA needed to decide)


def test_an_unknown_precision_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="auto, fp32, fp16, bf16"):
        choose_dtype("cpu", "fp8")


def test_names_round_trip():
    assert [precision_name(choose_dtype("cpu", p)) for p in PRECISIONS if p != "auto"] == ["fp32", "fp16", "bf16"]


def test_a_bf16_model_on_the_cpu_keeps_the_fp32_fingerprint_and_stays_close():
    fp32 = Encoder.from_spec(TINY_CLIP, "cpu")
    bf16 = Encoder.from_spec(TINY_CLIP, "cpu", precision="bf16")
    assert bf16.loaded.dtype == torch.bfloat16 and fp32.loaded.dtype == torch.float32
    assert bf16.fingerprint == fp32.fingerprint  # an index built in bf16 is served by the same weights
    pixels = torch.rand(4, 3, 32, 32)
    cosine = (fp32.encode_images(pixels) * bf16.encode_images(pixels)).sum(axis=1)
    assert cosine.min() > 0.99
