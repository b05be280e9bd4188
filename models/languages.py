"""Which languages a model speaks, and how it is asked to write in each.

A model trained on the world in several languages was taught a caption prefix per language (the
decoder writes a Chinese caption after "中文：", an English one after nothing) and a VQA prompt per
language. Training writes them to the model folder (`languages.json`); serving reads them, so it
knows which languages a model speaks. A folder without the file speaks only English, with the
server's VQA prompt: every model trained before there were languages.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from xmodal.models.errors import InvalidInput
from xmodal.models.prompts import DEFAULT_VQA_PROMPT

LANGUAGES_FILE = "languages.json"
DEFAULT_LANGUAGE = "en"


@dataclass(frozen=True)
class LanguagePrompts:
    caption_prefix: str  # the decoder writes a caption in this language after this text
    vqa_prompt: str  # "...{question}...": the decoder answers in this language after it
    # "...{query}...": the question whether an image shows a search query, and its two answers (yes, no).
    # The world's presence questions are written with it, and search re-ranking asks it (models/rerank.py).
    presence_question: str = "is there {query}?"
    presence_answers: tuple[str, str] = ("yes", "no")
    # The word that joins a query's objects ("a red circle and a blue star"): re-ranking asks about each part.
    conjunction: str = " and "


# The prompts training teaches for each language it knows.
LANGUAGE_PROMPTS: dict[str, LanguagePrompts] = {
    "en": LanguagePrompts(caption_prefix="", vqa_prompt=DEFAULT_VQA_PROMPT),
    "zh": LanguagePrompts(
        caption_prefix="中文：",
        vqa_prompt="问题：{question}回答：",
        presence_question="有{query}吗？",
        presence_answers=("有", "没有"),
        conjunction="和",
    ),
}


class UnsupportedLanguage(InvalidInput):
    """The request asks for a language the model was not trained to write."""


def language_prompts(language: str) -> LanguagePrompts:
    if language not in LANGUAGE_PROMPTS:
        raise UnsupportedLanguage(f"unknown language {language!r}: use one of {', '.join(LANGUAGE_PROMPTS)}")
    return LANGUAGE_PROMPTS[language]


def detect_language(text: str) -> str:
    """ "zh" when the text holds a CJK character, else "en": enough to tell the world's two languages apart."""
    return "zh" if any(_is_cjk(c) for c in text) else DEFAULT_LANGUAGE


def _is_cjk(char: str) -> bool:
    code = ord(char)
    return (
        0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0xF900 <= code <= 0xFAFF or 0x20000 <= code <= 0x2FA1F
    )


def write_languages(folder: str | Path, languages: dict[str, LanguagePrompts]) -> None:
    path = Path(folder) / LANGUAGES_FILE
    path.write_text(json.dumps({name: asdict(p) for name, p in languages.items()}, ensure_ascii=False, indent=2) + "\n")


def read_languages(folder: str | Path | None) -> dict[str, LanguagePrompts] | None:
    """The languages a model folder records, or None when it records none (an English-only model)."""
    if folder is None or not (path := Path(folder) / LANGUAGES_FILE).is_file():
        return None
    raw = json.loads(path.read_text(encoding="utf-8"))
    return {name: _prompts(name, recorded) for name, recorded in raw.items()}


def _prompts(name: str, recorded: dict) -> LanguagePrompts:
    """A recorded language's prompts; a file written before presence questions lacks them, and gets those
    training teaches for the language."""
    known = asdict(LANGUAGE_PROMPTS[name]) if name in LANGUAGE_PROMPTS else {}
    prompts = {**known, **recorded}
    if "presence_answers" in prompts:
        prompts["presence_answers"] = tuple(prompts["presence_answers"])
    return LanguagePrompts(**prompts)
