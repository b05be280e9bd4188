"""JPEGs decoded and preprocessed on the model's device (nvJPEG on CUDA), with the safe CPU path as fallback.

A CPU core decodes about 95 1600x1200 JPEGs a second even with draft scaling; one GPU decodes thousands
(../shared/measurements). The rules of models.images still hold: the pixel budget is checked from the JPEG
header (Pillow's lazy open reads no pixels) before anything is decoded, and every file this path cannot
take as it is (another format, an EXIF rotation, CMYK, no end-of-image marker, or one the decoder rejects)
goes through load_image: format allowlist, EXIF orientation, a skip reason instead of a crash.

On the CPU the same code runs torchvision's libjpeg-turbo decoder; that is how the tests cover it. The
preprocessing repeats open_clip's eval transform (resize, centre crop, normalise) with tensor ops; its
parity with the PIL path is measured by tests/unit/models/test_device_images.py and bench/bench_gpu.py.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import ExifTags, Image

from xmodal.models.images import ImageError, ImageTooLarge, load_image, source_size
from xmodal.models.loading import LoadedModel

log = logging.getLogger(__name__)

_DIRECT_MODES = ("RGB", "L")  # what the JPEG decoders turn into RGB exactly as Pillow does; CMYK is not
_END_OF_IMAGE = b"\xff\xd9"
_RESIZE_CHUNK = 32  # images resized in one call: 32 float copies of a 12 MP photo are ~4.6 GB at most


def jpeg_header(data: bytes, max_pixels: int) -> tuple[int, int] | None:
    """(width, height) of a JPEG the device decoder may take as it is, or None when the file must take
    the CPU path (load_image decides about it). Raises ImageTooLarge over the pixel budget: no pixel is
    decoded before this check."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=("JPEG",)) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageTooLarge(
                        f"image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}"
                    )
                rotated = img.getexif().get(ExifTags.Base.Orientation, 1) not in (0, 1)
                plain = img.format == "JPEG" and img.mode in _DIRECT_MODES and not rotated
    except ImageError:
        raise
    except Exception:  # noqa: BLE001 - not a JPEG, or a broken header: load_image gives the reason
        return None
    # No end marker: most likely truncated. Pillow refuses those; a GPU decoder may fill them with grey.
    return (width, height) if plain and data.rstrip(b"\0").endswith(_END_OF_IMAGE) else None


def decode_jpegs(blobs: Sequence[bytes], device: torch.device | str) -> list[torch.Tensor | None]:
    """JPEG files to uint8 RGB (3, H, W) tensors on `device`: one batched call (nvJPEG on CUDA), and on any
    error the files one by one; a file that still fails is None."""
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in blobs]
    if not tensors:
        return []
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders in favour of TorchCodec; they work, and are what torch ships.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
        except Exception as exc:  # noqa: BLE001 - one bad file fails the whole batched call: retry singly
            log.debug("batched JPEG decode failed (%s); decoding one by one", exc)
        decoded: list[torch.Tensor | None] = []
        for tensor in tensors:
            try:
                decoded.append(decode_jpeg([tensor], mode=ImageReadMode.RGB, device=device)[0])
            except Exception:  # noqa: BLE001 - any decoder error sends the file to the CPU path
                decoded.append(None)
        return decoded


class DevicePreprocess:
    """open_clip's eval transform for `shortest` (square size) and `squash` resizing, on uint8 (3, H, W)
    tensors of any device: resize with antialiasing, rounded to 8 bits as Pillow does, centre crop, /255,
    normalise. Images of one shape are resized together."""

    def __init__(self, cfg: dict, device: torch.device | str):
        from torchvision.transforms import InterpolationMode

        size = cfg["size"]
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.resize_mode = cfg.get("resize_mode", "shortest")
        self.interpolation = (
            InterpolationMode.BILINEAR if cfg.get("interpolation") == "bilinear" else InterpolationMode.BICUBIC
        )
        self.mean = torch.tensor(cfg["mean"], dtype=torch.float32, device=device).view(3, 1, 1) * 255
        self.std = torch.tensor(cfg["std"], dtype=torch.float32, device=device).view(3, 1, 1) * 255

    @staticmethod
    def supports(cfg: dict) -> bool:
        """True for the preprocess configs this class repeats exactly (open_clip's; not models.hf's)."""
        size = cfg.get("size")
        square = isinstance(size, int) or (isinstance(size, (tuple, list)) and len(size) == 2 and size[0] == size[1])
        return (
            {"mean", "std"} <= cfg.keys()
            and cfg.get("mode", "RGB") == "RGB"
            and cfg.get("interpolation", "bicubic") in ("bicubic", "bilinear")
            and (
                cfg.get("resize_mode", "shortest") == "squash"
                or (cfg.get("resize_mode", "shortest") == "shortest" and square)
            )
        )

    def __call__(self, images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out: list[torch.Tensor | None] = [None] * len(images)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            by_shape.setdefault(tuple(image.shape), []).append(i)
        for positions in by_shape.values():
            for start in range(0, len(positions), _RESIZE_CHUNK):
                chunk = positions[start : start + _RESIZE_CHUNK]
                for i, pixels in zip(chunk, self._batch(torch.stack([images[i] for i in chunk]))):
                    out[i] = pixels
        return [pixels for pixels in out if pixels is not None]

    def _batch(self, images: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as TF

        pixels = images.float()
        if self.resize_mode == "squash":
            pixels = TF.resize(pixels, list(self.size), self.interpolation, antialias=True)
        else:
            pixels = TF.resize(pixels, [self.size[0]], self.interpolation, antialias=True)
            pixels = TF.center_crop(pixels, list(self.size))
        pixels = pixels.clamp_(0, 255).round_()  # Pillow resizes to 8-bit values
        return (pixels - self.mean) / self.std


@dataclass(frozen=True)
class Decoded:
    pixels: torch.Tensor  # (3, H, W) float32, preprocessed: on the device, or on the CPU after a fallback
    width: int  # the upright file's size
    height: int


class DeviceDecoder:
    """Files to preprocessed pixels: plain JPEGs (jpeg_header) decoded together on `device`, every other
    file, and any the decoder rejects, through load_image and the model's own preprocess on the CPU; an
    ImageError in place of pixels for a file that cannot be indexed at all (over the budget, corrupt)."""

    def __init__(
        self, loaded: LoadedModel, max_pixels: int, draft_size: int | None, device: torch.device | None = None
    ):
        if not DevicePreprocess.supports(loaded.preprocess_cfg):
            raise ValueError(f"no device preprocessing for {loaded.spec}'s preprocess config {loaded.preprocess_cfg}")
        self.loaded, self.max_pixels, self.draft_size = loaded, max_pixels, draft_size
        self.device = device or loaded.device
        self.preprocess = DevicePreprocess(loaded.preprocess_cfg, self.device)
        self.fallbacks = 0  # files that went through the CPU path (or were refused) instead

    @staticmethod
    def supports(loaded: LoadedModel) -> bool:
        return DevicePreprocess.supports(loaded.preprocess_cfg)

    def decode(self, blobs: Sequence[bytes]) -> list[Decoded | ImageError]:
        results: list[Decoded | ImageError | None] = [None] * len(blobs)
        plain: list[int] = []
        for i, blob in enumerate(blobs):  # the budget, from the header, before any pixel is decoded
            try:
                if jpeg_header(blob, self.max_pixels) is not None:
                    plain.append(i)
            except ImageTooLarge as exc:
                results[i] = exc
        decoded = decode_jpegs([blobs[i] for i in plain], self.device)
        good = [(i, image) for i, image in zip(plain, decoded) if image is not None]
        pixels = self.preprocess([image for _, image in good]) if good else []
        for (i, image), preprocessed in zip(good, pixels):
            results[i] = Decoded(preprocessed, int(image.shape[2]), int(image.shape[1]))
        return [self._on_cpu(blobs[i]) if result is None else result for i, result in enumerate(results)]

    def _on_cpu(self, blob: bytes) -> Decoded | ImageError:
        self.fallbacks += 1
        try:
            image = load_image(blob, self.max_pixels, self.draft_size)
        except ImageError as exc:
            return exc
        width, height = source_size(image)
        return Decoded(self.loaded.preprocess(image), width, height)
