"""The batched JPEG decode path, run on the CPU (torchvision's libjpeg-turbo) through the code CUDA runs."""

import io

import pytest
import torch
from PIL import Image

from tests.conftest import FLICKR_1K, IMAGES_EDGE, TINY_CLIP, requires_data
from xmodal.models.device_images import DeviceDecoder, DevicePreprocess, decode_jpegs, jpeg_header
from xmodal.models.encoders import Encoder
from xmodal.models.images import DEFAULT_MAX_PIXELS, ImageError, ImageTooLarge, load_image

pytestmark = requires_data(IMAGES_EDGE)
PARITY_COSINE = 0.9999  # device path vs Pillow path, same model; measured 0.9999993 (tiny), 0.99999 (ViT-B-32)


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder.from_spec(TINY_CLIP, "cpu")


def _bytes(name: str) -> bytes:
    return (IMAGES_EDGE / name).read_bytes()


def test_the_header_admits_plain_jpegs_only_and_checks_the_budget_before_decoding():
    assert jpeg_header(_bytes("flower.jpg"), DEFAULT_MAX_PIXELS) == (480, 360)
    assert jpeg_header(_bytes("hopper_gray.jpg"), DEFAULT_MAX_PIXELS) == (128, 128)
    for name in ("hopper.png", "hopper_orientation_6.jpg", "pil_sample_cmyk.jpg", "truncated_jpeg.jpg", "broken.png"):
        assert jpeg_header(_bytes(name), DEFAULT_MAX_PIXELS) is None, name  # the CPU path decides
    with pytest.raises(ImageTooLarge, match="2048x12288"):
        jpeg_header(_bytes("meadow_cube.jpg"), 10_000_000)  # 25 MP: refused from its header alone


def test_a_failing_file_in_a_batch_is_none_and_the_others_still_decode():
    decoded = decode_jpegs([_bytes("flower.jpg"), _bytes("truncated_jpeg.jpg"), _bytes("hopper.png")], "cpu")
    assert decoded[0] is not None and decoded[0].shape == (3, 360, 480) and decoded[0].dtype == torch.uint8
    assert decoded[1] is None and decoded[2] is None


def _bogus_sampling(jpeg: bytes) -> bytes:
    """A baseline JPEG whose first component claims 0x0 sampling: its header reads fine, no decoder takes it."""
    start = bytearray(jpeg).index(b"\xff\xc0")  # SOF0: marker, length, precision, height, width, count, components
    return jpeg[: start + 11] + b"\x00" + jpeg[start + 12 :]


def test_every_file_gets_device_pixels_the_cpu_path_or_a_skip_reason(encoder):
    decoder = DeviceDecoder(encoder.loaded, max_pixels=10_000_000, draft_size=None, device=torch.device("cpu"))
    files = {name: _bytes(name) for name in ("flower.jpg", "truncated_jpeg.jpg", "hopper.png", "meadow_cube.jpg")}
    files["broken.png"] = _bytes("broken.png")
    files["bogus.jpg"] = _bogus_sampling(_bytes("bricks.jpg"))
    assert jpeg_header(files["bogus.jpg"], DEFAULT_MAX_PIXELS) == (512, 512)
    results = dict(zip(files, decoder.decode(list(files.values()))))
    assert results["flower.jpg"].pixels.shape == (3, 32, 32)
    assert (results["flower.jpg"].width, results["flower.jpg"].height) == (480, 360)
    assert results["hopper.png"].pixels.shape == (3, 32, 32)  # not a JPEG: decoded by Pillow instead
    assert "truncated" in str(results["truncated_jpeg.jpg"])
    assert "corrupt" in str(results["bogus.jpg"])  # the device decoder failed, then Pillow, with a reason
    assert "2048x12288" in str(results["meadow_cube.jpg"])  # 25 MP: refused from its header, never decoded
    assert isinstance(results["meadow_cube.jpg"], ImageTooLarge)
    assert isinstance(results["broken.png"], ImageError)
    assert decoder.fallbacks == 4  # truncated, PNG, bogus, broken: Pillow's turn


def test_the_batched_resize_matches_one_by_one():
    cfg = {"size": 24, "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.3, 0.4), "interpolation": "bicubic"}
    images = [torch.randint(0, 256, (3, 40 + 7 * (i % 2), 50), dtype=torch.uint8) for i in range(5)]
    preprocess = DevicePreprocess(cfg, "cpu")
    together = preprocess(images)
    alone = [preprocess([image])[0] for image in images]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(together, alone))
    assert [tuple(p.shape) for p in together] == [(3, 24, 24)] * 5


def test_configs_it_cannot_repeat_are_refused():
    base = {"size": 224, "mean": (0.5,) * 3, "std": (0.5,) * 3}
    assert DevicePreprocess.supports(base)
    assert DevicePreprocess.supports({**base, "resize_mode": "squash", "size": (224, 196)})
    assert not DevicePreprocess.supports({**base, "resize_mode": "longest"})
    assert not DevicePreprocess.supports({**base, "size": (224, 196)})  # shortest to a non-square size
    assert not DevicePreprocess.supports({"size": 224})  # models.hf's rules carry no open_clip mean/std


@requires_data(FLICKR_1K)
def test_embeddings_match_the_pillow_path(encoder):
    paths = sorted((FLICKR_1K / "images").glob("*.jpg"))[:48]
    blobs = [path.read_bytes() for path in paths]
    decoder = DeviceDecoder(encoder.loaded, DEFAULT_MAX_PIXELS, draft_size=None, device=torch.device("cpu"))
    results = decoder.decode(blobs)
    assert decoder.fallbacks == 0
    device = encoder.encode_images(torch.stack([r.pixels for r in results]))
    pillow = encoder.embed_images([load_image(blob) for blob in blobs])
    assert (device * pillow).sum(axis=1).min() >= PARITY_COSINE
    assert all((r.width, r.height) == Image.open(io.BytesIO(b)).size for r, b in zip(results, blobs))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@requires_data(FLICKR_1K)
def test_nvjpeg_embeddings_match_the_pillow_path_on_cuda():
    encoder = Encoder.from_spec(TINY_CLIP, "cuda", precision="fp32")  # fp32: the decoders' difference alone
    blobs = [path.read_bytes() for path in sorted((FLICKR_1K / "images").glob("*.jpg"))[:48]]
    decoder = DeviceDecoder(encoder.loaded, DEFAULT_MAX_PIXELS, draft_size=None)
    results = decoder.decode(blobs)
    assert decoder.fallbacks == 0 and all(r.pixels.is_cuda for r in results)
    device = encoder.encode_image_list([r.pixels for r in results])
    pillow = encoder.embed_images([load_image(blob) for blob in blobs])
    assert encoder._staging is not None and encoder._staging.pinned  # the Pillow batch went through it
    assert (device * pillow).sum(axis=1).min() >= PARITY_COSINE
