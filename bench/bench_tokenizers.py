"""Does open_clip's tokenizer serve the world's Chinese text, or does a tokenizer trained on the world's text do better?

For held-out world scenes in English and Chinese: tokens per text (mean, max) by kind (canonical caption,
every caption, the decoder's caption target with its language prefix, VQA target, partial query), the
share that fits the demo model's context (start + text + end <= 32) and the share that decodes back exactly
(decode(encode(t)) == t after the decoder's whitespace cleaning). Tokenizers: open_clip's SimpleTokenizer
(CLIP's byte-level BPE, 49,408 tokens) and byte-level BPEs learnt on the world's train scenes, with and
without cutting Chinese into the grammar's words first. Prints a table, writes JSON.

    .venv/bin/python bench/bench_tokenizers.py                # 1,000 held-out scenes per language
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from statistics import mean

import open_clip

from xmodal.models.languages import language_prompts
from xmodal.models.prompts import vqa_text
from xmodal.models.training.tokenizer import train_world_tokenizer
from xmodal.models.world import World, partial_query, query_text

DEFAULT_OUTPUT = Path(__file__).parent / "results" / "tokenizers.json"
CONTEXT = 32  # xmodal-small-coca's context length
KINDS = ("canonical caption", "3-object caption", "captions", "caption target", "vqa target", "query")


def world_texts(language: str, scenes: int) -> dict[str, list[str]]:
    prompts = language_prompts(language)
    rng = random.Random("bench-tokenizers")
    texts: dict[str, list[str]] = {kind: [] for kind in KINDS}
    for scene in World(seed=0, language=language).scenes(scenes, "heldout"):
        texts["canonical caption"].append(scene.caption)
        if len(scene.graph.objects) == 3:
            texts["3-object caption"].append(scene.caption)
        texts["captions"] += scene.captions
        texts["caption target"].append(prompts.caption_prefix + scene.caption)
        texts["vqa target"] += [vqa_text(q.question, q.answer, prompts.vqa_prompt) for q in scene.questions]
        texts["query"].append(query_text(partial_query(scene.graph, rng), language))
    return texts


def measure(tokenizer, texts: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    rows = {}
    for kind, items in texts.items():
        lengths, exact = [], 0
        for text in items:
            ids = tokenizer.encode(text)
            lengths.append(len(ids))
            # The decoder's own clean-up (models/decoding.py): spaces collapsed.
            exact += " ".join(tokenizer.decode(ids).split()) == text
        rows[kind] = {
            "texts": len(items),
            "mean_tokens": round(mean(lengths), 1),
            "max_tokens": max(lengths),
            "fits_context": round(sum(n + 2 <= CONTEXT for n in lengths) / len(lengths), 3),
            "lossless": round(exact / len(items), 3),
        }
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=1000, help="held-out scenes per language")
    parser.add_argument("--vocab-size", type=int, default=1024, help="most tokens of the learnt BPEs")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    tokenizers = {"open_clip SimpleTokenizer": open_clip.tokenizer.SimpleTokenizer(context_length=CONTEXT)}
    learnt = {}
    for name, segment in (("world BPE, no word cut", False), ("world BPE, word cut", True)):
        began = time.perf_counter()
        tokenizers[name] = train_world_tokenizer(("en", "zh"), args.vocab_size, CONTEXT, segment=segment)
        learnt[name] = round(time.perf_counter() - began, 1)
    texts = {language: world_texts(language, args.scenes) for language in ("en", "zh")}
    results = {
        name: {
            "vocab_size": tokenizer.vocab_size,
            "train_seconds": learnt.get(name),
            "languages": {language: measure(tokenizer, t) for language, t in texts.items()},
        }
        for name, tokenizer in tokenizers.items()
    }
    print(f"{'tokenizer':28} {'lang':4} {'text':18} {'mean':>5} {'max':>4} {'fits 32':>8} {'lossless':>8}")
    for name, result in results.items():
        for language, rows in result["languages"].items():
            for kind, row in rows.items():
                print(
                    f"{name:28} {language:4} {kind:18} {row['mean_tokens']:5.1f} {row['max_tokens']:4d} "
                    f"{row['fits_context']:8.3f} {row['lossless']:8.3f}"
                )
    summary = {
        "scenes_per_language": args.scenes,
        "context_length": CONTEXT,
        "vocab_size_asked": args.vocab_size,
        "seconds": round(time.perf_counter() - started, 1),
        "tokenizers": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.output}")
    return summary


if __name__ == "__main__":
    main()
