"""A model that writes two languages: captions after the language's prefix, answers in the question's language."""

from __future__ import annotations

import json

import pytest
import torch

from xmodal.models.decoding import CocaDecoder
from xmodal.models.encoders import Encoder
from xmodal.models.generation import Captioner
from xmodal.models.languages import (
    LANGUAGE_PROMPTS,
    UnsupportedLanguage,
    detect_language,
    read_languages,
    write_languages,
)


@pytest.fixture(scope="module")
def captioner(tiny_bilingual_coca_dir):
    return Captioner(Encoder.from_spec(f"local-dir:{tiny_bilingual_coca_dir}", "cpu"))


def test_detect_language():
    assert detect_language("三角形是什么颜色？") == "zh" and detect_language("what colour? ，") == "en"


def test_captions_in_chinese_follow_the_prefix(captioner, monkeypatch):
    prefixes = []
    generate = CocaDecoder.generate
    monkeypatch.setattr(CocaDecoder, "generate", lambda self, p, o: prefixes.append(o.prefix) or generate(self, p, o))
    pixels = torch.zeros(1, 3, 32, 32)
    assert captioner.languages == ("en", "zh")
    captioner.caption(pixels, language="zh")
    captioner.caption(pixels)
    assert prefixes == ["中文：", ""]


def test_answers_come_in_the_question_s_language_or_the_one_asked(captioner, monkeypatch):
    pixels = torch.zeros(3, 32, 32)
    assert captioner.answer(pixels, "三角形是什么颜色？", max_new_tokens=2).language == "zh"
    assert captioner.answer(pixels, "what colour is the star?", max_new_tokens=2).language == "en"
    ranked = captioner.answer(pixels, "what colour is the star?", ["红色", "蓝色"], language="zh")
    assert ranked.language == "zh" and ranked.method == "likelihood" and set(ranked.scores or {}) == {"红色", "蓝色"}
    assert (
        captioner.prompt_for("星形是什么颜色？", captioner.language_prompts("zh").vqa_prompt)
        == "问题：星形是什么颜色？回答："
    )
    with pytest.raises(UnsupportedLanguage, match="writes en, zh, not 'fr'"):
        captioner.language_prompts("fr")


def test_a_languages_file_written_before_presence_questions_gets_each_language_s_own(tmp_path):
    (tmp_path / "languages.json").write_text(
        json.dumps(
            {
                "en": {"caption_prefix": "", "vqa_prompt": "question: {question} answer:"},
                "zh": {"caption_prefix": "中文：", "vqa_prompt": "问题：{question}回答："},
            }
        ),
        encoding="utf-8",
    )
    read = read_languages(tmp_path)
    assert read == LANGUAGE_PROMPTS
    assert read["zh"].presence_question.format(query="一个红色圆形") == "有一个红色圆形吗？"
    write_languages(tmp_path, read)
    assert read_languages(tmp_path) == read


def test_re_ranking_asks_whether_an_image_shows_the_query_in_the_query_s_language(captioner):
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    asked = {
        "一个红色圆形": ("问题：有一个红色圆形吗？回答：", ["有", "没有"]),
        "a red circle": ("question: is there a red circle? answer:", ["yes", "no"]),
    }
    for query, (prompt, answers) in asked.items():
        expected = captioner.decoder.score_answers(pixels, [prompt] * 2, [answers] * 2)
        yes = torch.nn.functional.logsigmoid(torch.tensor([y - n for y, n in expected]))
        assert captioner.presence_scores(pixels, query) == pytest.approx(yes.tolist(), abs=1e-5)
    with pytest.raises(UnsupportedLanguage):
        captioner.presence_scores(pixels, "a red circle", language="fr")
