"""Safe image decoding: one RGB picture out of any file a user may point us at.

Used by the indexer (skip with a reason) and the server (answer 4xx), so both
apply the same rules: a pixel budget checked *before* decoding (decompression
bombs), EXIF orientation applied, first frame of animations, every mode
(CMYK, palette, alpha, 16-bit, grayscale) converted to 8-bit RGB.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from xmodal.models.errors import InvalidInput, TooLarge

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".tga"})
# Only these decoders may run: Pillow would otherwise try dozens of rarely used
# parsers (and hand EPS files to Ghostscript) on whatever bytes arrive.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "DIB", "GIF", "TIFF", "TGA")  # JPEG also opens MPO (Ultra HDR)
Image.init()  # register every plugin now, so the allowlist's names all resolve
# The one default for the largest decoded image (width x height), used by the server (Settings.max_pixels),
# the indexer (BuildConfig) and every command's --max-pixels: about 150 MB of RGB, room for a 48 MP photo.
DEFAULT_MAX_PIXELS = 40_000_000
# Alpha is flattened onto white: what a viewer shows for a transparent background.
_BACKGROUND = (255, 255, 255)


class ImageError(InvalidInput):
    """The input is not an image we can safely decode; the message says why."""


class ImageTooLarge(ImageError, TooLarge):
    """The image has more pixels than the budget (decompression bombs included)."""


def load_image(
    source: bytes | str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None
) -> Image.Image:
    """Decode `source` (file path or raw bytes) into an 8-bit RGB image, upright.

    With `draft_size`, a JPEG is decoded at the smallest power-of-two reduction (libjpeg's DCT
    scaling) whose shorter side is still >= 2 x draft_size: several times faster for photos much
    larger than the model's input. The 2x margin keeps embeddings within the parity bound
    (ViT-B-32 at 224: cosine >= 0.99999 to a full decode; 1x gave 0.9997, see bench/bench_decode.py)."""
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        with warnings.catch_warnings():
            # Pillow warns (and past 2x its own limit raises) on huge images; our
            # own pixel budget below decides, with a clearer message.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(stream, formats=ALLOWED_FORMATS) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageTooLarge(
                        f"image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}"
                    )
                img.seek(0)  # first frame of an animation
                if draft_size and img.format == "JPEG" and min(width, height) >= 4 * draft_size:
                    scale = 2 * draft_size / min(width, height)
                    img.draft(None, (max(1, round(width * scale)), max(1, round(height * scale))))
                img.load()
                upright = ImageOps.exif_transpose(img)
                rgb = to_rgb(upright)
                turned = upright.size != img.size  # EXIF rotated by 90 degrees: width and height swap
                rgb.info[SOURCE_SIZE] = (height, width) if turned else (width, height)
                return rgb
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"refused as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"not a recognised image format (accepted: {', '.join(ALLOWED_FORMATS)})") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Truncated or corrupt data surfaces as any of these from Pillow's plugins.
        raise ImageError(f"corrupt or truncated image: {exc}") from exc


SOURCE_SIZE = "xmodal_source_size"  # Image.info key: the upright file's size, before any draft reduction


def source_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of the upright image as stored in its file: a draft-decoded JPEG is smaller."""
    return image.info.get(SOURCE_SIZE, image.size)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, flattening alpha onto white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        img = _to_8bit_gray(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, _BACKGROUND)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    return img


def _to_8bit_gray(img: Image.Image) -> Image.Image:
    """Scale a 16-bit/int/float single-channel image to 0..255 by its actual range."""
    values = np.asarray(img, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    scale = 255.0 / (high - low) if high > low else 0.0
    return Image.fromarray(((values - low) * scale).astype(np.uint8), mode="L")


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES
