"""Transformers checkpoints (CLIP, SigLIP, SigLIP 2) behind the open_clip Encoder's contract.

Most CLIP-family weights people hold are in Transformers' format. `hf:org/repo` (through the Hugging
Face cache, offline rules as in models.loading) and a local folder whose config.json names model_type
clip / siglip / siglip2 load here, with the checkpoint's own tokenizer, padding and image rules (read
from its processor config and applied to the PIL image xmodal's safe decoder made). `HfEncoder` is an
`Encoder`, so the indexer, the server and contrastive VQA use it unchanged; it has no text decoder.
Transformers is an optional extra (`pip install 'xmodal[hf]'`), imported only when such a model loads.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from xmodal.models.encoders import Encoder, _unit_rows
from xmodal.models.loading import (
    LoadedModel,
    ModelNotAvailable,
    ModelSpecError,
    _hub_unreachable,
    _set_cpu_threads,
    offline_mode,
    resolve_device,
    weights_fingerprint,
)
from xmodal.models.precision import choose_dtype
from xmodal.models.specs import ModelSpec, SpecKind, parse_spec

log = logging.getLogger(__name__)

MODEL_TYPES = ("clip", "siglip", "siglip2")
INSTALL_HINT = "pip install 'xmodal[hf]'"
OPEN_CLIP_CONFIG = "open_clip_config.json"
# What a repository's snapshot needs: configs, tokenizer files, weights (safetensors; .bin if none).
HUB_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors"]
HUB_BIN_PATTERNS = ["pytorch_model*.bin"]


def is_hf_spec(spec: str | ModelSpec) -> bool:
    """True for `hf:org/repo` and for a local folder holding a Transformers config.json (and no open_clip one)."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    if spec.kind is SpecKind.HF:
        return True
    if spec.kind is not SpecKind.LOCAL_DIR:
        return False
    folder = Path(str(spec.source))
    return (folder / "config.json").is_file() and not (folder / OPEN_CLIP_CONFIG).is_file()


def load_hf_model(
    spec: str | ModelSpec,
    device: str = "auto",
    *,
    offline: bool | None = None,
    cache_dir: str | None = None,
    threads: int | None = None,
    precision: str = "auto",
) -> LoadedModel:
    """Load a Transformers CLIP/SigLIP checkpoint in eval mode, in models.precision's dtype (as load_model)."""
    started = time.perf_counter()
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    offline = offline_mode() if offline is None else offline
    folder = _hub_snapshot(str(spec.source), offline, cache_dir) if spec.kind is SpecKind.HF else Path(str(spec.source))
    config = _read_json(folder / "config.json")
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ModelSpecError(
            f"{folder}/config.json has model_type {model_type!r}; xmodal loads Transformers checkpoints of type "
            f"{', '.join(MODEL_TYPES)} (open_clip folders hold {OPEN_CLIP_CONFIG} instead)"
        )
    image_rules = ImageRules.from_config(_image_processor_config(folder), model_type)
    transformers = _import_transformers()
    target = resolve_device(device)
    if target.type == "cpu":
        _set_cpu_threads(threads)

    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # a "Loading weights" bar per load fills server logs
    try:
        model = transformers.AutoModel.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()
    model.eval()
    fingerprint = weights_fingerprint(model)
    dtype = choose_dtype(target, precision)
    model.to(device=target, dtype=dtype)
    text_length = int(model.config.text_config.max_position_embeddings)
    tokenizer = TextTokenizer(
        transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True),
        max_length=text_length,
        pad_to_max=model_type != "clip",  # SigLIP was trained on texts padded to full length
    )
    loaded = LoadedModel(
        spec=spec,
        model=model,
        tokenizer=tokenizer,
        preprocess=image_rules,
        preprocess_cfg=image_rules.describe(),
        device=target,
        dtype=dtype,
        fingerprint=fingerprint,
        embed_dim=_embed_dim(model.config),
        context_length=text_length,
        has_decoder=False,
        load_seconds=time.perf_counter() - started,
        model_cfg={"transformers": config},
    )
    log.info("loaded %s (Transformers %s) on %s (%s) in %.1fs", spec, model_type, target, dtype, loaded.load_seconds)
    return loaded


class HfEncoder(Encoder):
    """A Transformers CLIP/SigLIP model as an `Encoder`: same inputs, same normalised float32 out."""

    def __init__(self, loaded: LoadedModel):  # no super().__init__: the int8 and trimming paths are open_clip's
        self.loaded = loaded
        self.model = loaded.model
        self.transformers_model: Any = loaded.model  # get_image_features / get_text_features
        self.device = loaded.device
        self.embed_dim = loaded.embed_dim
        self.trims_padding = False
        self.text_products = None
        self.image_products = None
        self.patches = isinstance(loaded.preprocess, ImageRules) and loaded.preprocess.patch_size is not None

    def tokenize(self, texts: Sequence[str]) -> Any:
        """The checkpoint's own tokenizer and padding: a dict of (n, length) tensors the model takes."""
        return self.loaded.tokenizer(list(texts))

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> np.ndarray:
        pixels = pixels.to(self.device, dtype=self.loaded.dtype, non_blocking=True)
        if self.patches:  # SigLIP 2 NaFlex: patches, their mask and grid (see ImageRules)
            inputs = unpack_patches(pixels)
        else:
            inputs = {"pixel_values": pixels}
        return _unit_rows(_features(self.transformers_model.get_image_features(**inputs)))

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        tokens = {name: value.to(self.device) for name, value in self.tokenize(texts).items()}
        return _unit_rows(_features(self.transformers_model.get_text_features(**tokens)))


class TextTokenizer:
    """The checkpoint's tokenizer with its padding rule: CLIP pads to the longest text (its causal tower
    reads the end-of-text token), SigLIP to max_length (its tower pools the last position). Texts past
    max_length are truncated. Returns the tensors the tokenizer names (input_ids, maybe attention_mask)."""

    def __init__(self, tokenizer: Any, *, max_length: int, pad_to_max: bool):
        self.tokenizer, self.max_length, self.pad_to_max = tokenizer, max_length, pad_to_max
        self.context_length = max_length

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(
            list(texts),
            padding="max_length" if self.pad_to_max else "longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {name: encoded[name] for name in self.tokenizer.model_input_names if name in encoded}


@dataclass(frozen=True)
class ImageRules:
    """The checkpoint's image preprocessing, read from its processor config and applied to a PIL image
    as Transformers' PIL image processors do: resize (shortest edge, or to height x width) -> center crop
    -> rescale -> normalise, giving a (3, H, W) float32 tensor.

    SigLIP 2 NaFlex (patch_size set) resizes to at most max_patches patches of its own aspect ratio and
    returns one (max_patches + 1, 3 * patch_size**2) tensor: the patches (zero rows past the image), then a
    row whose first two values are the patch grid's height and width, so images still batch by stacking."""

    resize: tuple[int, int] | int | None  # (height, width), or an int for the shortest edge
    resample: int
    crop: tuple[int, int] | None
    rescale: float | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    patch_size: int | None = None
    max_patches: int | None = None

    @classmethod
    def from_config(cls, cfg: dict, model_type: str) -> ImageRules:
        """Rules from an image processor config (preprocessor_config.json's keys)."""
        naflex = model_type == "siglip2"
        resize: tuple[int, int] | int | None = None
        size = cfg.get("size") or {}
        if cfg.get("do_resize", True) and not naflex:
            if isinstance(size, int):
                size = {"shortest_edge": size}
            if "shortest_edge" in size and "longest_edge" not in size:
                resize = int(size["shortest_edge"])
            elif "height" in size and "width" in size:
                resize = (int(size["height"]), int(size["width"]))
            else:
                raise ModelSpecError(f"unsupported resize rule in the image processor config: size={size}")
        crop_size = cfg.get("crop_size") or {}
        crop = None
        if cfg.get("do_center_crop", False) and not naflex:
            if isinstance(crop_size, int):
                crop_size = {"height": crop_size, "width": crop_size}
            crop = (int(crop_size["height"]), int(crop_size["width"]))
        normalize = cfg.get("do_normalize", True)
        return cls(
            resize=resize,
            resample=_resample(cfg.get("resample", Image.Resampling.BICUBIC)),
            crop=crop,
            rescale=float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else None,
            mean=tuple(map(float, cfg.get("image_mean", (0.5, 0.5, 0.5)))) if normalize else None,
            std=tuple(map(float, cfg.get("image_std", (0.5, 0.5, 0.5)))) if normalize else None,
            patch_size=int(cfg.get("patch_size", 16)) if naflex else None,
            max_patches=int(cfg.get("max_num_patches", 256)) if naflex else None,
        )

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image if image.mode == "RGB" else image.convert("RGB")
        if self.patch_size:
            return self._patches(image)
        if self.resize is not None:
            height, width = self._resized_size(image.height, image.width)
            image = image.resize((width, height), resample=self.resample)
        array = np.asarray(image)
        if self.crop is not None:
            array = _center_crop(array, *self.crop)
        return torch.from_numpy(self._scaled(array).transpose(2, 0, 1).copy())

    def describe(self) -> dict:
        """The preprocess_cfg the indexer reads ('size' sets the JPEG draft size) and logs show."""
        if self.patch_size:
            side = self.patch_size * math.isqrt(int(self.max_patches or 1))
            size: Any = (side, side)
        else:
            size = self.crop or self.resize or 224
        return {"size": size, "mean": self.mean, "std": self.std, "resample": self.resample, "crop": self.crop}

    def _resized_size(self, height: int, width: int) -> tuple[int, int]:
        if not isinstance(self.resize, int):
            return self.resize or (height, width)
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.resize * long / short)  # as transformers' get_resize_output_image_size
        return (new_long, self.resize) if width <= height else (self.resize, new_long)

    def _scaled(self, array: np.ndarray) -> np.ndarray:
        values = array.astype(np.float64) * self.rescale if self.rescale else array.astype(np.float64)
        values = values.astype(np.float32)
        if self.mean is not None and self.std is not None:
            values = (values - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return values.astype(np.float32)

    def _patches(self, image: Image.Image) -> torch.Tensor:
        patch, limit = int(self.patch_size or 16), int(self.max_patches or 256)
        height, width = _naflex_size(image.height, image.width, patch, limit)
        values = self._scaled(np.asarray(image.resize((width, height), resample=self.resample)))
        rows, cols = height // patch, width // patch
        patches = values.reshape(rows, patch, cols, patch, 3).transpose(0, 2, 1, 3, 4).reshape(rows * cols, -1)
        packed = np.zeros((limit + 1, patches.shape[1]), np.float32)
        packed[: rows * cols] = patches
        packed[limit, :2] = (rows, cols)
        return torch.from_numpy(packed)


def unpack_patches(packed: torch.Tensor) -> dict[str, torch.Tensor]:
    """A stacked batch of ImageRules' NaFlex tensors as Siglip2Model's inputs."""
    pixel_values, grid = packed[:, :-1], packed[:, -1, :2].round().long()
    counts = grid[:, 0] * grid[:, 1]
    positions = torch.arange(pixel_values.shape[1], device=packed.device)
    mask = (positions[None, :] < counts[:, None]).long()
    return {"pixel_values": pixel_values, "pixel_attention_mask": mask, "spatial_shapes": grid}


def _naflex_size(height: int, width: int, patch: int, limit: int, eps: float = 1e-5) -> tuple[int, int]:
    """The largest size of the image's aspect ratio, in whole patches, with at most `limit` patches
    (the binary search of transformers' Siglip2 get_image_size_for_max_num_patches)."""

    def scaled(scale: float, side: int) -> int:
        return max(patch, math.ceil(side * scale / patch) * patch)

    low, high = eps / 10, 100.0
    while high - low >= eps:
        scale = (low + high) / 2
        if (scaled(scale, height) / patch) * (scaled(scale, width) / patch) <= limit:
            low = scale
        else:
            high = scale
    return scaled(low, height), scaled(low, width)


def _center_crop(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Center crop of an (H, W, 3) array; a smaller image is padded with zeros first (as transformers does)."""
    rows, cols = array.shape[:2]
    if rows < height or cols < width:
        padded = np.zeros((max(rows, height), max(cols, width), array.shape[2]), array.dtype)
        top, left = math.ceil((padded.shape[0] - rows) / 2), math.ceil((padded.shape[1] - cols) / 2)
        padded[top : top + rows, left : left + cols] = array
        array, rows, cols = padded, padded.shape[0], padded.shape[1]
    top, left = (rows - height) // 2, (cols - width) // 2
    return array[top : top + height, left : left + width]


def _resample(value: Any) -> int:
    """A PIL resampling filter from a processor config (an int, or a name such as 'BICUBIC')."""
    if isinstance(value, str):
        return int(Image.Resampling[value.upper()])
    return int(value)


def _features(output: Any) -> torch.Tensor:
    """get_*_features returns the projected embedding, or (transformers 5) an output holding it as pooler_output."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _embed_dim(config: Any) -> int:
    if config.model_type == "clip":
        return int(config.projection_dim)
    return int(config.vision_config.hidden_size)  # SigLIP: the pooled vision output, as wide as the text head's


def _image_processor_config(folder: Path) -> dict:
    """preprocessor_config.json (hub checkpoints), or the image_processor part of processor_config.json
    (what transformers 5 writes for a processor)."""
    if (folder / "preprocessor_config.json").is_file():
        return _read_json(folder / "preprocessor_config.json")
    if (folder / "processor_config.json").is_file():
        nested = _read_json(folder / "processor_config.json").get("image_processor")
        if isinstance(nested, dict):
            return nested
    raise ModelNotAvailable(
        f"{folder} has no preprocessor_config.json: xmodal preprocesses images by the checkpoint's own rules; "
        "save the model's processor beside it (processor.save_pretrained(folder))"
    )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ModelNotAvailable(f"{path} not found: a Transformers model folder holds config.json") from exc
    except json.JSONDecodeError as exc:
        raise ModelSpecError(f"{path} is not valid JSON: {exc}") from exc


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise ModelNotAvailable(
            f"Transformers checkpoints need the transformers package: {INSTALL_HINT} (transformers>=5)"
        ) from exc
    if int(transformers.__version__.split(".")[0]) < 5:
        raise ModelNotAvailable(f"transformers {transformers.__version__} is too old; {INSTALL_HINT} (>=5)")
    return transformers


def _hub_snapshot(repo: str, offline: bool, cache_dir: str | None) -> Path:
    """The repository's snapshot folder in the Hugging Face cache, downloading it unless offline."""
    from huggingface_hub import constants, snapshot_download

    cache = cache_dir or constants.HF_HUB_CACHE
    how = (
        f"On a machine with internet run `hf download {repo}` and copy its Hugging Face cache to {cache} "
        "(HF_HOME / HF_HUB_CACHE set the location), or point --model at a local Transformers model folder."
    )
    reason = "offline mode"
    if not offline:
        unreachable = _hub_unreachable(constants.ENDPOINT)
        if unreachable:
            reason = unreachable
        else:
            try:
                folder = Path(snapshot_download(repo, cache_dir=cache_dir, allow_patterns=HUB_PATTERNS))
                if not any(folder.glob("*.safetensors")):
                    snapshot_download(repo, cache_dir=cache_dir, allow_patterns=HUB_BIN_PATTERNS)
                return folder
            except Exception as exc:  # noqa: BLE001 - network, auth, missing repo: say which, and how to fix it
                raise ModelNotAvailable(
                    f"could not download hub repo {repo!r}: {type(exc).__name__}: {exc}. {how}"
                ) from exc
    try:
        folder = Path(snapshot_download(repo, cache_dir=cache_dir, local_files_only=True))
    except Exception as exc:  # noqa: BLE001 - LocalEntryNotFoundError and kin: the repo is not in the cache
        raise ModelNotAvailable(f"{reason}: hub repo {repo!r} is not in the cache {cache}. {how}") from exc
    if not (folder / "config.json").is_file():
        raise ModelNotAvailable(f"hub repo {repo!r} in the cache {cache} has no config.json. {how}")
    return folder
