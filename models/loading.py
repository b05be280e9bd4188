"""Turn a model spec into a ready model: weights resolved, device and dtype chosen.

Weight files are resolved *before* any network call or model construction, so
in offline mode a missing file fails at once with a message that names the
files and how to provide them. Every spec form ends in open_clip's own factory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from xmodal.models.errors import InvalidInput, Unavailable
from xmodal.models.languages import LanguagePrompts, read_languages
from xmodal.models.precision import choose_dtype
from xmodal.models.registry import architecture_cfg, register_configs, register_plain
from xmodal.models.specs import ModelSpec, SpecKind, parse_spec
from xmodal.models.text_tokenizer import folder_tokenizer
from xmodal.models.vision_stem import add_vision_stem, split_model_cfg

log = logging.getLogger(__name__)

HUB_CONFIG_NAME = "open_clip_config.json"
HUB_WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
RANDOM_SEED = 0
_TRUE = {"1", "true", "yes", "on"}


class ModelSpecError(InvalidInput):
    """The spec names no architecture, tag or file we know."""


class ModelNotAvailable(Unavailable, RuntimeError):
    """The weights are not on this machine and may not (or could not) be downloaded."""


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: torch.nn.Module
    tokenizer: Callable[..., Any]  # texts -> open_clip's token tensor, or a dict of tensors (models.hf)
    preprocess: Callable[[Any], torch.Tensor]
    preprocess_cfg: dict
    device: torch.device
    dtype: torch.dtype
    fingerprint: str
    embed_dim: int
    context_length: int
    has_decoder: bool
    load_seconds: float
    # The open_clip architecture config the model was built from: with the weights and
    # preprocess_cfg it rebuilds the model (models.model_dir.save_model_dir writes all three).
    model_cfg: dict = field(default_factory=dict)
    # The languages the model writes, with their caption prefix and VQA prompt (its folder's
    # languages.json); None: English only, with the server's VQA prompt (models/languages.py).
    languages: dict[str, LanguagePrompts] | None = None


def offline_mode() -> bool:
    """True when XMODAL_OFFLINE or HF_HUB_OFFLINE asks us never to touch the network."""
    return any(os.environ.get(var, "").strip().lower() in _TRUE for var in ("XMODAL_OFFLINE", "HF_HUB_OFFLINE"))


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(
    spec: str | ModelSpec,
    device: str = "auto",
    *,
    offline: bool | None = None,
    cache_dir: str | None = None,
    threads: int | None = None,
    precision: str = "auto",
) -> LoadedModel:
    """Load `spec` onto `device` (auto: CUDA if present) in eval mode, in the dtype models.precision
    chooses (auto: fp16 on GPU, fp32 on CPU). The fingerprint is always of the fp32 weights."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    started = time.perf_counter()
    register_configs()
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    offline = offline_mode() if offline is None else offline
    target = resolve_device(device)
    if target.type == "cpu":
        _set_cpu_threads(threads)

    name, kwargs = _factory_arguments(spec, offline=offline, cache_dir=cache_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)  # bare names give the same random weights every time
        model = create_open_clip_model(name, device="cpu", precision="fp32", **kwargs)
        if spec.kind is SpecKind.RANDOM:
            init_uninitialised_parameters(model)
    model.eval()
    fingerprint = weights_fingerprint(model)

    dtype = choose_dtype(target, precision)
    model.to(device=target, dtype=dtype)
    preprocess_cfg = dict(open_clip.get_model_preprocess_cfg(model))
    preprocess = image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=False)
    model_cfg = _model_cfg(name, kwargs)
    tokenizer = _tokenizer(name, model_cfg)
    loaded = LoadedModel(
        spec=spec,
        model=model,
        tokenizer=tokenizer,
        preprocess=preprocess,
        preprocess_cfg=preprocess_cfg,
        device=target,
        dtype=dtype,
        fingerprint=fingerprint,
        embed_dim=_embed_dim(model),
        context_length=int(getattr(tokenizer, "context_length", 77)),
        has_decoder=hasattr(model, "text_decoder"),
        load_seconds=time.perf_counter() - started,
        model_cfg=model_cfg,
        languages=read_languages(_folder(name)),
    )
    log.info("loaded %s on %s (%s) in %.1fs", spec, target, dtype, loaded.load_seconds)
    return loaded


def create_open_clip_model(name: str, **kwargs: Any) -> torch.nn.Module:
    """open_clip.create_model(name, **kwargs), with the convolutional vision stem the architecture's
    config asks for (models.vision_stem): the stem is in place before any weights are loaded."""
    import open_clip

    folder = _folder(name)
    config = _folder_config(folder) if folder is not None else {}
    plain, stem = split_model_cfg(config["model_cfg"] if folder is not None else architecture_cfg(name) or {})
    if stem is None:
        return open_clip.create_model(name, **kwargs)
    weights = kwargs.pop("pretrained", None)
    if folder is not None:
        weights = next((folder / n for n in HUB_WEIGHT_NAMES if (folder / n).is_file()), None)
        kwargs["force_preprocess_cfg"] = {**config.get("preprocess_cfg", {}), **kwargs.get("force_preprocess_cfg", {})}
        name = register_plain(plain)
    with _quiet_random_init_warning(weights is not None):  # the weights come next, below
        model = add_vision_stem(open_clip.create_model(name, **kwargs), stem)
    if weights is not None:
        open_clip.load_checkpoint(model, str(weights), strict=True)
    return model


@contextlib.contextmanager
def _quiet_random_init_warning(quiet: bool) -> Iterator[None]:
    """Drop open_clip's "No pretrained weights loaded ... initialized randomly" (a root-logger
    warning) while building a model whose weights are loaded right after."""

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")

    root = logging.getLogger()
    if quiet:
        root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _factory_arguments(spec: ModelSpec, *, offline: bool, cache_dir: str | None) -> tuple[str, dict]:
    """Map a spec to open_clip.create_model's (name, kwargs), resolving weight files first."""
    if spec.kind is SpecKind.HF:
        raise ModelSpecError(f"{spec} is a Transformers checkpoint: Encoder.from_spec loads it (models.hf)")
    source = spec.source or ""  # every kind but RANDOM has one
    if spec.kind is SpecKind.LOCAL_DIR:
        folder = Path(source)
        if (folder / "config.json").is_file() and not (folder / HUB_CONFIG_NAME).is_file():
            raise ModelSpecError(f"{folder} is a Transformers model folder: Encoder.from_spec loads it (models.hf)")
        if not (folder / HUB_CONFIG_NAME).is_file():
            raise ModelNotAvailable(
                f"model directory {folder} has no {HUB_CONFIG_NAME}; a model directory holds "
                f"{HUB_CONFIG_NAME} (model_cfg + preprocess_cfg) and {HUB_WEIGHT_NAMES[0]}"
            )
        return f"local-dir:{folder}", {}
    if spec.kind is SpecKind.HF_HUB:
        config_path = _hub_file(source, (HUB_CONFIG_NAME,), offline=offline, cache_dir=cache_dir)
        _hub_file(source, HUB_WEIGHT_NAMES, offline=offline, cache_dir=cache_dir)
        # The snapshot folder now holds config and weights: open_clip's local-dir reads both.
        return f"local-dir:{Path(config_path).parent}", {}

    assert spec.arch is not None  # every remaining kind names an architecture
    arch = _known_arch(spec.arch)
    if spec.kind is SpecKind.RANDOM:
        return arch, {}
    if spec.kind is SpecKind.CHECKPOINT:
        if not Path(source).is_file():
            raise ModelNotAvailable(f"checkpoint file not found: {source}")
        return arch, {"pretrained": source, **_arch_preprocess(arch)}
    return arch, _pretrained_tag_arguments(arch, source, offline=offline, cache_dir=cache_dir)


def _folder(name: str) -> Path | None:
    return Path(name.removeprefix("local-dir:")) if name.startswith("local-dir:") else None


def _folder_config(folder: Path) -> dict:
    """A model folder's open_clip hub config: model_cfg and preprocess_cfg."""
    return json.loads((folder / HUB_CONFIG_NAME).read_text())


def _tokenizer(name: str, model_cfg: dict) -> Any:
    """The tokenizer a model folder ships (text_tokenizer.json), else open_clip's for the architecture."""
    import open_clip

    folder = _folder(name)
    context_length = int(model_cfg.get("text_cfg", {}).get("context_length", 77))
    own = folder_tokenizer(folder, context_length) if folder is not None else None
    return own if own is not None else open_clip.get_tokenizer(name)


def _model_cfg(name: str, kwargs: dict) -> dict:
    """The architecture config open_clip.create_model(name, **kwargs) builds, as a fresh dict."""

    folder = _folder(name)
    if folder is not None:
        return dict(_folder_config(folder)["model_cfg"])
    model_cfg = architecture_cfg(name) or {}
    if kwargs.get("force_quick_gelu"):
        model_cfg["quick_gelu"] = True  # as create_model does
    return model_cfg


def _known_arch(arch: str) -> str:
    import open_clip

    if arch not in open_clip.list_models():
        raise ModelSpecError(
            f"unknown open_clip architecture {arch!r}; see `open_clip.list_models()` "
            f"(the project's own: {', '.join(register_configs())})"
        )
    return arch


def _pretrained_tag_arguments(arch: str, tag: str, *, offline: bool, cache_dir: str | None) -> dict:
    import open_clip

    tag_cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not tag_cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise ModelSpecError(f"unknown pretrained tag {tag!r} for {arch}; known tags: {', '.join(tags) or 'none'}")
    if tag_cfg.get("hf_hub"):
        # open_clip writes 'org/repo/' (default file names) or 'org/repo/file.bin'.
        repo, filename = os.path.split(tag_cfg["hf_hub"])
        checkpoint = _hub_file(repo, _weight_candidates(filename), offline=offline, cache_dir=cache_dir)
    else:
        checkpoint = _url_file(tag_cfg["url"], offline=offline, cache_dir=cache_dir)
    return {
        "pretrained": checkpoint,
        "force_quick_gelu": bool(tag_cfg.get("quick_gelu", False)),
        "force_preprocess_cfg": _preprocess_part(tag_cfg),
    }


def _weight_candidates(filename: str) -> tuple[str, ...]:
    """Weight file names to look for, safetensors first (open_clip's own preference)."""
    if not filename:
        return HUB_WEIGHT_NAMES
    if filename.endswith((".bin", ".pth")):
        return (filename[:-4] + ".safetensors", filename)
    return (filename,)


def _hub_file(repo: str, names: tuple[str, ...], *, offline: bool, cache_dir: str | None) -> str:
    """Path of the first of `names` in the hub cache, downloading it unless offline."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError

    for name in names:
        cached = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
        if isinstance(cached, str):
            return cached
    cache = cache_dir or constants.HF_HUB_CACHE
    how = (
        f"On a machine with internet run `hf download {repo} {names[0]}` (or `huggingface-cli download`) "
        f"and copy its Hugging Face cache to {cache} (HF_HOME / HF_HUB_CACHE set the location), "
        "or point --model at a local model directory or checkpoint file."
    )
    if offline:
        raise ModelNotAvailable(
            f"offline mode: none of {', '.join(names)} from hub repo {repo!r} is in the cache {cache}. {how}"
        )
    unreachable = _hub_unreachable(constants.ENDPOINT)
    if unreachable:
        raise ModelNotAvailable(
            f"{names[0]} from hub repo {repo!r} is not in the cache {cache} and {unreachable}. {how}"
        )
    errors = []
    for name in names:
        try:
            return hf_hub_download(repo, name, cache_dir=cache_dir, library_name="xmodal")
        except EntryNotFoundError as exc:  # this file name is absent: try the next one
            errors.append(f"{name}: {exc}")
        except Exception as exc:  # noqa: BLE001 - network, auth, missing repo: no point in more names
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
            break
    raise ModelNotAvailable(f"could not download weights from hub repo {repo!r} ({'; '.join(errors)}). {how}")


def _hub_unreachable(endpoint: str, timeout: float = 3.0) -> str | None:
    """Why the hub can't be reached, or None. One quick TCP connect instead of the hub
    client's retries, which take a minute to report a machine without network."""
    if any(os.environ.get(var) for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # only the proxy knows; let the hub client try
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError as exc:
        return f"the hub at {endpoint} cannot be reached ({exc}); with no network set XMODAL_OFFLINE=1"
    return None


def _url_file(url: str, *, offline: bool, cache_dir: str | None) -> str:
    from open_clip.pretrained import download_pretrained_from_url

    cache = Path(cache_dir or "~/.cache/clip").expanduser()
    expected = cache / os.path.basename(url)
    if expected.is_file():
        return str(expected)
    if offline:
        raise ModelNotAvailable(
            f"offline mode: {expected.name} is not in {cache}. Download {url} on a machine with "
            f"internet and place it at {expected}, or use a local checkpoint spec NAME:/path/file."
        )
    return download_pretrained_from_url(url, cache_dir=str(cache))


def _arch_preprocess(arch: str) -> dict:
    """Preprocessing an architecture's published weights use (its first pretrained tag's)."""
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(arch)
    if not tags:
        return {}
    tag_cfg = open_clip.get_pretrained_cfg(arch, tags[0])
    return {
        "force_quick_gelu": bool(tag_cfg.get("quick_gelu", False)),
        "force_preprocess_cfg": _preprocess_part(tag_cfg),
    }


def _preprocess_part(tag_cfg: dict) -> dict:
    keys = ("mean", "std", "interpolation", "resize_mode")
    return {key: tag_cfg[key] for key in keys if key in tag_cfg}


def init_uninitialised_parameters(model: torch.nn.Module) -> None:
    """open_clip allocates CoCa's decoder projection with torch.empty; give it a real init."""
    decoder = getattr(model, "text_decoder", None)
    projection = getattr(decoder, "text_projection", None)
    if decoder is not None and isinstance(projection, torch.nn.Parameter):
        with torch.no_grad():
            torch.nn.init.normal_(projection, std=decoder.width**-0.5)


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def _embed_dim(model: torch.nn.Module) -> int:
    visual = getattr(model, "visual", None)
    dim = getattr(visual, "output_dim", None)
    if dim is None:
        dim = model.text_projection.shape[1] if hasattr(model, "text_projection") else model.text.output_dim
    return int(dim)


def _set_cpu_threads(threads: int | None) -> None:
    """Use the cores this process may run on (containers restrict them), not the host's count."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, threads or available))
