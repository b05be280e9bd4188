"""A tokenizer trained on a model's own text, shipped in its model folder (`text_tokenizer.json`).

open_clip's SimpleTokenizer is byte-level BPE learnt on English web text: a Chinese world caption
takes 78 of its tokens (context 32) and comes back with "，" turned into "," (measured in
bench/bench_tokenizers.py; decision in docs/decisions/bilingual-world.md). A byte-level BPE learnt
on the world's own English and Chinese text needs a few hundred tokens, decodes every text back
exactly and still encodes any character (its alphabet is every byte).

`TrainedTokenizer` has what the rest of the project uses of SimpleTokenizer: calling it on texts
gives a (n, context_length) LongTensor (start token, text, end token, zero padding, the end token kept
when cut), `encode`/`decode`, `sot_token_id`/`eot_token_id`, `vocab_size`, `context_length`. As in
CLIP's, padding is id 0 and never a text token, and end-of-text is the highest id (text towers that pool
at the argmax token pool there).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import torch

TOKENIZER_FILE = "text_tokenizer.json"
PAD, SOT, EOT = "<pad>", "<start_of_text>", "<end_of_text>"
FIRST_TOKENS = (PAD, SOT)  # ids 0 and 1; EOT is the last id
WORD_END = "</w>"  # a word's last token ends in this, as in CLIP's BPE: spaces are not tokens
# Decoding joins words with spaces, then drops the spaces a writer would not put: next to Chinese
# characters and full-width punctuation, and before ASCII punctuation ("star ? answer" -> "star? answer").
_CJK = "\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
_NO_SPACE = re.compile(f"(?<=[{_CJK}]) | (?=[{_CJK}])| (?=[,.?!:;])")


class TrainedTokenizer:
    def __init__(self, tokenizer, context_length: int):
        """`tokenizer`: a `tokenizers.Tokenizer` with ids 0 and 1 for PAD and SOT, and EOT its last id."""
        self.vocab_size = int(tokenizer.get_vocab_size())
        ids = [tokenizer.token_to_id(t) for t in (PAD, SOT, EOT)]
        if ids != [0, 1, self.vocab_size - 1]:
            raise ValueError(
                f"a trained tokenizer needs ids 0, 1 and {self.vocab_size - 1} for {PAD, SOT, EOT}, got {ids}"
            )
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.pad_token_id, self.sot_token_id, self.eot_token_id = ids

    @classmethod
    def from_file(cls, path: str | Path, context_length: int) -> TrainedTokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)), context_length)

    def save(self, path: str | Path) -> None:
        self.tokenizer.save(str(path))

    def encode(self, text: str) -> list[int]:
        # As SimpleTokenizer cleans whitespace; lowercasing is the tokenizer's own normaliser.
        return list(self.tokenizer.encode(" ".join(text.split()), add_special_tokens=False).ids)

    def decode(self, tokens: list[int]) -> str:
        """As CLIP's decode: the tokens' bytes, a space at each word's end; then spaces tidied (_NO_SPACE)."""
        special = {self.pad_token_id, self.sot_token_id, self.eot_token_id}
        pieces = "".join(self.tokenizer.id_to_token(int(t)) or "" for t in tokens if int(t) not in special)
        decoder = _byte_decoder()
        words = bytearray(decoder.get(c, 32) for c in pieces.replace(WORD_END, " ")).decode("utf-8", errors="replace")
        return _NO_SPACE.sub("", " ".join(words.split()))

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        length = context_length or self.context_length
        result = torch.zeros(len(texts), length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text)][: length - 1] + [self.eot_token_id]
            result[row, : len(ids)] = torch.tensor(ids)
        return result


@cache
def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE's printable stand-ins for bytes, back to the bytes (open_clip's table, as GPT-2's)."""
    from open_clip.tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


def folder_tokenizer(folder: str | Path, context_length: int) -> TrainedTokenizer | None:
    """The tokenizer a model folder ships, or None when it uses its architecture's."""
    path = Path(folder) / TOKENIZER_FILE
    return TrainedTokenizer.from_file(path, context_length) if path.is_file() else None
