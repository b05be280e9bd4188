"""Learn a byte-level BPE tokenizer from the generated world's text (training side only).

The texts are every caption, question/answer target and partial query of the world's first train
scenes in each language, so the merges cover every word the world writes; byte-level pre-tokenising
keeps any other text encodable. The tokenizer is a function of (languages, seed, vocabulary size), so
a resumed run learns the same one. Why and how large: docs/decisions/bilingual-world.md.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator, Sequence

from xmodal.models.languages import LanguagePrompts, language_prompts
from xmodal.models.prompts import vqa_text
from xmodal.models.text_tokenizer import EOT, FIRST_TOKENS, WORD_END, TrainedTokenizer
from xmodal.models.training.config import CsvData, TrainConfig, WorldData
from xmodal.models.world import World, partial_query, query_text
from xmodal.models.world.language_zh import WORDS_ZH

DEFAULT_VOCAB_SIZE = 1024
TRAINING_SCENES = 500  # every word and phrase of the world appears many times in these


def world_texts(languages: Sequence[str], seed: int = 0, scenes: int = TRAINING_SCENES) -> Iterator[str]:
    """The texts a model trained on the world reads and writes, in each language."""
    for language in languages:
        prompts = language_prompts(language)
        world = World(seed=seed, language=language)
        rng = random.Random(f"xmodal-tokenizer:{seed}")
        for scene in world.scenes(scenes, "train"):
            yield from scene.captions
            yield prompts.caption_prefix + scene.caption
            for qa in scene.questions:
                yield vqa_text(qa.question, qa.answer, prompts.vqa_prompt)
            yield query_text(partial_query(scene.graph, rng), language)


def train_world_tokenizer(
    languages: Sequence[str] = ("en", "zh"),
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    context_length: int = 32,
    seed: int = 0,
    scenes: int = TRAINING_SCENES,
    segment_words: Sequence[str] = ("中文", "问题", "回答"),
    segment: bool = True,
) -> TrainedTokenizer:
    """Byte-level BPE over the world's texts, words marked at their end as CLIP's ("red</w>"): lowercase,
    lossless on the world's texts, any character encodable."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(end_of_word_suffix=WORD_END))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    # Spaces are dropped and each word ends in WORD_END, as in CLIP's BPE, so a word is the same tokens
    # wherever it stands: after "answer:" or alone as a candidate answer (a GPT-2 style " red" would not
    # be "red"), and a prompt tokenises to the first tokens of the text it starts. Chinese has no
    # spaces: a run of Han characters is first cut into the grammar's words (longest first) and any other
    # Han character alone, so merges build words, never a whole clause in one opaque token (without
    # the cut a 1,024-token BPE learnt "上面一个小的红色圆形" as one token).
    words = "|".join(re.escape(w) for w in sorted({*WORDS_ZH, *segment_words}, key=len, reverse=True))
    cut = [pre_tokenizers.Split(Regex(f"{words}|\\p{{Han}}"), behavior="isolated")] if segment else []
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [*cut, pre_tokenizers.Whitespace(), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(FIRST_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix=WORD_END,
        show_progress=False,
    )
    tokenizer.train_from_iterator(world_texts(languages, seed, scenes), trainer)
    tokenizer = _with_every_byte(tokenizer)
    tokenizer.add_special_tokens([EOT])  # the last id, as CLIP's end-of-text
    return TrainedTokenizer(tokenizer, context_length)


def _with_every_byte(tokenizer):
    """Every byte alone and at a word's end in the vocabulary, so no text is ever dropped: the trainer adds
    only the word-end forms it saw ("é</w>" is missing when no world word ends in é)."""
    from tokenizers import Tokenizer, pre_tokenizers

    state = json.loads(tokenizer.to_str())
    vocab = state["model"]["vocab"]
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        for piece in (char, char + WORD_END):
            vocab.setdefault(piece, len(vocab))
    return Tokenizer.from_str(json.dumps(state))


def config_tokenizer(config: TrainConfig) -> TrainedTokenizer | None:
    """The tokenizer a run learns (TrainConfig.tokenizer="world"), or None: the starting model's own."""
    if config.tokenizer != "world":
        return None
    data = config.data
    assert isinstance(data, WorldData)  # TrainConfig checks it
    return train_world_tokenizer(data.languages, seed=data.seed, scenes=TRAINING_SCENES)


def model_languages(data: WorldData | CsvData) -> dict[str, LanguagePrompts] | None:
    """The languages a model trained on `data` writes, for its folder; None for English only (no file, as before)."""
    if not isinstance(data, WorldData) or data.languages == ("en",):
        return None
    return {language: language_prompts(language) for language in data.languages}
