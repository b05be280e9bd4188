"""Tiny real Transformers checkpoints (CLIP, SigLIP, SigLIP 2 NaFlex) saved as model folders, offline.

Random weights from a fixed seed; tokenizers built from vocabularies written here: a byte-level BPE for
CLIP, a SentencePiece model trained on a few English and Chinese sentences for SigLIP (the real
SiglipTokenizer class, so a Chinese query has its own pieces), a GemmaTokenizer-style tokenizers BPE for
SigLIP 2. Each folder is what `model.save_pretrained` + `processor.save_pretrained` write.
"""

from __future__ import annotations

import io
from pathlib import Path

TEXT_LAYERS = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
VISION_LAYERS = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
CORPUS = [
    "a photo of a cat",
    "a dog on the grass",
    "a red bus in the street",
    "two people riding horses",
    "a plate of food on a table",
    "一只猫坐在沙发上",
    "一只狗在草地上",
    "街上的红色公共汽车",
    "桌子上的一盘食物",
    "两个人骑马",
]


def save_tiny_clip(folder: Path) -> Path:
    """A CLIPModel (projection 16, 32x32 images: shortest edge 32, center crop) with a byte-level BPE tokenizer."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    merges = [("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>"), ("p", "h"), ("ph", "o")]
    for pair in merges:
        vocab["".join(pair)] = len(vocab)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    eos = vocab["<|endoftext|>"]
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            max_position_embeddings=77,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=eos,
            pad_token_id=eos,
            **TEXT_LAYERS,
        ),
        vision_config=dict(image_size=32, patch_size=8, **VISION_LAYERS),
        projection_dim=16,
    )
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIPModel(config).eval()
    return _save(folder, model, CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer))


def save_tiny_siglip(folder: Path) -> Path:
    """A SiglipModel (32x32 images, texts padded to 16) with a SentencePiece SiglipTokenizer."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

    tokenizer = _sentencepiece_tokenizer(folder)
    config = SiglipConfig(
        text_config=_siglip_text(tokenizer), vision_config=dict(image_size=32, patch_size=8, **VISION_LAYERS)
    )
    image_processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = SiglipModel(config).eval()
    return _save(folder, model, SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer))


def save_tiny_siglip2(folder: Path) -> Path:
    """A SigLIP 2 NaFlex Siglip2Model: images resized to at most 16 patches of 8 pixels, their own aspect ratio."""
    import torch
    from transformers import Siglip2Config, Siglip2ImageProcessor, Siglip2Model, Siglip2Processor

    tokenizer = _sentencepiece_tokenizer(folder)
    vision = dict(patch_size=8, num_patches=16, **VISION_LAYERS)
    config = Siglip2Config(text_config=_siglip_text(tokenizer), vision_config=vision)
    image_processor = Siglip2ImageProcessor(patch_size=8, max_num_patches=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Siglip2Model(config).eval()
    return _save(folder, model, Siglip2Processor(image_processor=image_processor, tokenizer=tokenizer))


def _siglip_text(tokenizer) -> dict:
    ids = dict(pad_token_id=0, eos_token_id=1, bos_token_id=1)
    return dict(vocab_size=tokenizer.vocab_size, max_position_embeddings=16, **ids, **TEXT_LAYERS)


def _sentencepiece_tokenizer(folder: Path):
    """A SiglipTokenizer over a SentencePiece model trained here on CORPUS (English and Chinese)."""
    import sentencepiece as spm
    from transformers import SiglipTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    model_file = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=model_file,
        vocab_size=60,
        character_coverage=1.0,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    spiece = folder / "spiece.model"
    spiece.write_bytes(model_file.getvalue())
    return SiglipTokenizer(vocab_file=str(spiece), model_max_length=16)


def _save(folder: Path, model, processor) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
