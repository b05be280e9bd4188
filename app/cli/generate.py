"""`xmodal caption` and `xmodal ask`: captions and answers from a CoCa model, for image files on disk."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional, cast

import typer

from xmodal.app.cli.common import DeviceOption, RefusedPixelsOption, error, fail, setup_logging
from xmodal.models.images import DEFAULT_MAX_PIXELS
from xmodal.models.specs import DEFAULT_SPEC

if TYPE_CHECKING:  # models.decoding imports torch: at run time DecodeOptions checks the mode itself
    from xmodal.models.decoding import DecodeMode


def _load_captioner(model: str, device: str, vqa_prompt: str | None = None, int8: bool = False):
    """The model as a Captioner, or a readable exit 2."""
    from xmodal.models.encoders import Encoder
    from xmodal.models.generation import Captioner
    from xmodal.models.loading import ModelNotAvailable, ModelSpecError
    from xmodal.models.prompts import DEFAULT_VQA_PROMPT

    try:
        return Captioner(Encoder.from_spec(model, device), vqa_prompt or DEFAULT_VQA_PROMPT, int8=int8)
    except (ModelNotAvailable, ModelSpecError, ValueError) as exc:
        fail(exc)


def _read_pixels(captioner, path: Path, max_pixels: int):
    """The preprocessed image, or None after an error line on stderr."""
    from xmodal.models.images import ImageError, load_image

    if not path.is_file():
        error(f"{path}: no such file")
        return None
    try:
        return captioner.encoder.preprocess_image(load_image(path, max_pixels))
    except (ImageError, OSError) as exc:
        error(f"{path}: {exc}")
        return None


def caption(
    images: Annotated[list[Path], typer.Argument(help="Image files")],
    model: Annotated[str, typer.Option(help="Model spec with a caption decoder (CoCa)")] = DEFAULT_SPEC,
    mode: Annotated[str, typer.Option(help="greedy, beam or sample")] = "greedy",
    beams: Annotated[Optional[int], typer.Option(help="Beam width for --mode beam (default 3)")] = None,
    max_tokens: Annotated[
        Optional[int],
        typer.Option(
            min=1, help="Most new tokens per caption (default: until end-of-text, within the model's context)"
        ),
    ] = None,
    prompt: Annotated[str, typer.Option(help="Text each caption starts with (left out of the output)")] = "",
    seed: Annotated[Optional[int], typer.Option(help="Seed for --mode sample")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model batch")] = 8,
    int8: Annotated[
        bool, typer.Option("--int8", help="CPU: decode with int8 weight copies (faster, approximate)")
    ] = False,
    language: Annotated[
        Optional[str], typer.Option(help="Caption language: en (default) or one the model was trained in, e.g. zh")
    ] = None,
    device: DeviceOption = "auto",
    max_pixels: RefusedPixelsOption = DEFAULT_MAX_PIXELS,
) -> None:
    """Caption images: prints PATH<TAB>CAPTION per image. Exit code 1 if any image failed."""
    import torch

    from xmodal.models.decoding import DecodeOptions
    from xmodal.models.generation import DecoderUnavailable

    setup_logging("warning")
    try:
        num_beams = beams if beams is not None else 3 if mode == "beam" else 1
        options = DecodeOptions(
            mode=cast("DecodeMode", mode), num_beams=num_beams, max_new_tokens=max_tokens, prefix=prompt, seed=seed
        )
    except ValueError as exc:
        fail(exc)
    captioner = _load_captioner(model, device, int8=int8)
    try:
        captioner.require_decoder("captioning")
        captioner.language_prompts(language)
    except (DecoderUnavailable, ValueError) as exc:  # ValueError: a language the model does not write
        fail(exc)
    failed = False
    for start in range(0, len(images), batch_size):
        batch = [(path, _read_pixels(captioner, path, max_pixels)) for path in images[start : start + batch_size]]
        good = [(path, pixels) for path, pixels in batch if pixels is not None]
        failed |= len(good) < len(batch)
        if not good:
            continue
        try:
            candidates = captioner.caption(torch.stack([pixels for _, pixels in good]), options, language)
        except ValueError as exc:  # e.g. a prompt that fills the context
            fail(exc)
        for (path, _), per_image in zip(good, candidates):
            typer.echo(f"{path}\t{per_image[0].text}")
    if failed:
        raise typer.Exit(1)


def ask(
    image: Annotated[Path, typer.Argument(help="Image file")],
    question: Annotated[str, typer.Argument(help="The question")],
    answers: Annotated[
        Optional[str], typer.Option(help="Comma-separated candidate answers: prints the best, then every score")
    ] = None,
    model: Annotated[str, typer.Option(help="Model spec (open questions need a CoCa model)")] = DEFAULT_SPEC,
    max_tokens: Annotated[
        int, typer.Option(min=1, help="Most new tokens of an open-ended answer (it ends at end-of-text before that)")
    ] = 10,
    template: Annotated[Optional[str], typer.Option(help="VQA prompt with {question}")] = None,
    language: Annotated[
        Optional[str],
        typer.Option(help="Answer language: en, zh, ... (default: the question's own, for a model trained in several)"),
    ] = None,
    device: DeviceOption = "auto",
    max_pixels: RefusedPixelsOption = DEFAULT_MAX_PIXELS,
) -> None:
    """Answer a question about an image. With --answers: the best one, then ANSWER<TAB>SCORE per candidate, best first."""
    from xmodal.models.generation import DecoderUnavailable

    setup_logging("warning")
    candidates = [a.strip() for a in answers.split(",") if a.strip()] if answers is not None else None
    captioner = _load_captioner(model, device, template)
    pixels = _read_pixels(captioner, image, max_pixels)
    if pixels is None:
        raise typer.Exit(1)
    try:
        result = captioner.answer(pixels, question, candidates, max_new_tokens=max_tokens, language=language)
    except (DecoderUnavailable, ValueError) as exc:
        fail(exc)
    typer.echo(result.answer)
    for answer, score in sorted((result.scores or {}).items(), key=lambda item: -item[1]):
        typer.echo(f"{answer}\t{score:.6f}")
