"""A tokenizer learnt on the world's text: lossless on every world text, short Chinese, saved and loaded."""

from __future__ import annotations

import pytest

from xmodal.models.languages import language_prompts
from xmodal.models.prompts import vqa_prompt, vqa_text
from xmodal.models.text_tokenizer import TOKENIZER_FILE, folder_tokenizer
from xmodal.models.training.tokenizer import train_world_tokenizer, world_texts


@pytest.fixture(scope="module")
def tokenizer():
    return train_world_tokenizer(("en", "zh"), vocab_size=600, scenes=150)


def test_every_world_text_decodes_back_exactly(tokenizer):
    texts = list(world_texts(("en", "zh"), seed=1, scenes=60))
    assert any("，" in t for t in texts) and any("？" in t for t in texts)
    for text in texts:
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_chinese_words_are_tokens_and_a_caption_fits_the_context(tokenizer):
    caption = "上面一个小的红色圆形，左边一个大的蓝色方形，中间一个小的绿色星形"
    pieces = [tokenizer.decode([i]) for i in tokenizer.encode(caption)]
    assert pieces[:6] == ["上面", "一个", "小", "的", "红色", "圆形"]
    row = tokenizer([language_prompts("zh").caption_prefix + caption])[0]
    assert row[0] == tokenizer.sot_token_id and tokenizer.eot_token_id in row.tolist()
    assert tokenizer.decode(row.tolist()) == "中文：" + caption


def test_a_word_is_the_same_tokens_alone_and_after_a_prompt(tokenizer):
    # Candidate answers are scored alone after the prompt (CocaDecoder.score_answers).
    for language, question, answer in (("en", "what colour is the star?", "red"), ("zh", "星形是什么颜色？", "红色")):
        target = tokenizer.encode(vqa_text(question, answer, language_prompts(language).vqa_prompt))
        assert target[-len(tokenizer.encode(answer)) :] == tokenizer.encode(answer)


def test_a_prompt_tokenises_to_the_start_of_its_target(tokenizer):
    # Training teaches a target's tokens after its prompt's count of tokens (examples.Collate._taught).
    for language, question, answer in (("en", "what colour is the star?", "red"), ("zh", "星形是什么颜色？", "红色")):
        template = language_prompts(language).vqa_prompt
        prompt = tokenizer.encode(vqa_prompt(question, template))
        assert tokenizer.encode(vqa_text(question, answer, template))[: len(prompt)] == prompt
    assert tokenizer.encode("中文：上面一个小的红色圆形")[:2] == tokenizer.encode("中文：")


def test_unseen_text_still_encodes_and_padding_is_never_a_text_token(tokenizer):
    text = "Ünïcode 日本語 émoji 🙂 x"
    ids = tokenizer.encode(text)
    # Every character comes back; spaces next to Chinese characters are a Chinese writer's choice (none).
    assert 0 not in ids and tokenizer.decode(ids) == "ünïcode日本語émoji 🙂 x"
    long = tokenizer(["红色" * 100], context_length=8)[0].tolist()
    assert long[0] == tokenizer.sot_token_id and long[-1] == tokenizer.eot_token_id


def test_saved_in_a_model_folder_and_loaded_back(tokenizer, tmp_path):
    assert folder_tokenizer(tmp_path, 32) is None
    tokenizer.save(tmp_path / TOKENIZER_FILE)
    loaded = folder_tokenizer(tmp_path, 32)
    assert loaded is not None and loaded.vocab_size == tokenizer.vocab_size
    text = "问题：三角形是什么颜色？回答：红色"
    assert loaded.encode(text) == tokenizer.encode(text)
