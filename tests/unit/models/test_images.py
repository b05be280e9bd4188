import io

import numpy as np
import pytest
from PIL import Image

from tests.conftest import EDGE_UNDECODABLE, IMAGES_EDGE, requires_data
from xmodal.models.images import ImageError, ImageTooLarge, load_image, source_size

pytestmark = requires_data(IMAGES_EDGE)
# Without the folder, one placeholder case: it fails through requires_data instead of an empty (skipped) list.
DECODABLE = (
    sorted(p.name for p in IMAGES_EDGE.iterdir() if p.name not in EDGE_UNDECODABLE)
    if IMAGES_EDGE.is_dir()
    else ["images-edge-missing"]
)


@pytest.mark.parametrize("name", DECODABLE)
def test_every_decodable_edge_file_becomes_8bit_rgb(name):
    image = load_image(IMAGES_EDGE / name)
    assert image.mode == "RGB"
    assert np.asarray(image).dtype == np.uint8


@pytest.mark.parametrize("name", sorted(EDGE_UNDECODABLE))
def test_every_undecodable_or_dangerous_file_is_refused_with_a_reason(name):
    with pytest.raises(ImageError, match=EDGE_UNDECODABLE[name]):
        load_image(IMAGES_EDGE / name)


@pytest.mark.parametrize(
    "name",
    [
        "hopper_orientation_2.jpg",
        "hopper_orientation_3.jpg",
        "hopper_orientation_6.jpg",
        "hopper_orientation_8.jpg",
        "hopper_orientation_6.webp",
    ],
)
def test_exif_orientation_is_applied(name):
    upright = np.asarray(load_image(IMAGES_EDGE / "hopper.png"), dtype=float)
    as_stored = np.asarray(Image.open(IMAGES_EDGE / name).convert("RGB"), dtype=float)
    ours = np.asarray(load_image(IMAGES_EDGE / name), dtype=float)
    assert np.abs(ours - upright).mean() < 10  # JPEG noise only
    assert np.abs(as_stored - upright).mean() > 40  # the stored pixels really are turned


def test_alpha_is_flattened_onto_white_and_cmyk_converted():
    transparent = np.asarray(load_image(IMAGES_EDGE / "transparent.png"))
    assert tuple(transparent[0, 0]) == (255, 255, 255)
    cmyk = Image.open(IMAGES_EDGE / "pil_sample_cmyk.jpg")
    assert cmyk.mode == "CMYK" and load_image(IMAGES_EDGE / "pil_sample_cmyk.jpg").mode == "RGB"


def test_sixteen_bit_uses_the_full_8bit_range():
    pixels = np.asarray(load_image(IMAGES_EDGE / "16bit.cropped.tif"))
    assert pixels.min() == 0 and pixels.max() == 255


def test_pixel_budget_is_checked_before_decoding():
    with pytest.raises(ImageTooLarge, match="over the limit"):
        load_image(IMAGES_EDGE / "meadow_cube.jpg", max_pixels=1_000_000)  # 2048x12288
    with pytest.raises(ImageTooLarge):
        load_image((IMAGES_EDGE / "decompression_bomb.gif").read_bytes())


def test_bytes_and_paths_decode_alike():
    data = (IMAGES_EDGE / "hopper.webp").read_bytes()
    assert np.array_equal(np.asarray(load_image(data)), np.asarray(load_image(IMAGES_EDGE / "hopper.webp")))
    with pytest.raises(ImageError):
        load_image(b"")


@pytest.mark.parametrize("orientation, upright", [(1, (1600, 1200)), (6, (1200, 1600))])
def test_a_draft_decode_keeps_the_files_upright_size(orientation, upright):
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.new("RGB", (1600, 1200), (200, 30, 30)).save(buffer, "JPEG", exif=exif)
    drafted = load_image(buffer.getvalue(), draft_size=224)
    assert max(drafted.size) < 1600 and source_size(drafted) == upright
    assert (drafted.width < drafted.height) == (upright[0] < upright[1])
    full = load_image(buffer.getvalue())
    assert full.size == upright and source_size(full) == upright
