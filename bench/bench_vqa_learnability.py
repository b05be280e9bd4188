"""Which question types the world model's decoder can learn at all, given an image tower that already works.

A diagnosis for the VQA goal of issue #16. It loads a trained world model (a folder written by `xmodal
train` or bench_world.py), freezes its image tower, and trains the text tower and caption decoder on one
question type alone: plain CoCa forward, cross-entropy on the answer token only. It reports held-out
accuracy as training goes. Linear probes come first and show what the frozen parts already hold: each
object's shape and colour in its patch token (after the decoder's key/value norm), and the question's words
at the position that predicts the answer. A type that stays at its prior here is not short of
information or of training budget. The decoder does not find the function.

    python bench/bench_vqa_learnability.py /tmp/xmodal-bench-world --types presence,colour --steps 300
    python bench/bench_vqa_learnability.py MODEL --fresh-decoder   # text tower and decoder from random weights
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

from xmodal.models.loading import load_model
from xmodal.models.prompts import vqa_text
from xmodal.models.registry import register_plain
from xmodal.models.training.objective import PAD_ID, decoder_states
from xmodal.models.training.world_evaluation import WorldEvalConfig
from xmodal.models.vision_stem import split_model_cfg
from xmodal.models.world import COLOURS, QUESTION_TYPES, SHAPES, World
from xmodal.models.world.scene import POSITION_CENTRES

DEFAULT_OUTPUT = Path(__file__).parent / "results" / "vqa_learnability.json"
IMAGE_SIZE = WorldEvalConfig().image_size  # rendered as the evaluation renders them; preprocessing resizes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a trained world model's folder")
    parser.add_argument("--types", default="presence,colour,position", help=f"of {', '.join(QUESTION_TYPES)}")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--fresh-decoder", action="store_true", help="text tower and decoder start from random weights")
    parser.add_argument("--scenes", type=int, default=6000, help="training scenes the questions come from")
    parser.add_argument("--heldout", type=int, default=400, help="held-out scenes the accuracy is measured on")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    world = World(seed=0)
    train_scenes, heldout = world.scenes(args.scenes, "train"), world.scenes(args.heldout, "heldout")
    loaded = load_model(args.model, device="cpu")
    if getattr(loaded.model.visual, "attn_pool", None) is not None:
        raise SystemExit(
            f"{args.model}: its decoder reads an attentional pooler's tokens, not patches; nothing to probe"
        )
    probes = {**_patch_probes(loaded, train_scenes[:3000]), **_question_probes(loaded, train_scenes[:3000])}
    rows = []
    for kind in args.types.split(","):
        started = time.perf_counter()
        model = load_model(args.model, device="cpu").model  # every type starts from the same weights
        if args.fresh_decoder:
            _reset_text_side(model, loaded.model_cfg)
        test = _asked(kind, heldout)
        curve = _learn(model, loaded, kind, train_scenes, test, args)
        prior = _prior(test)
        rows.append({"type": kind, "prior": prior, "curve": curve, "seconds": round(time.perf_counter() - started)})
    summary = {
        "model": str(args.model),
        "settings": {k: v for k, v in vars(args).items() if k not in ("model", "output")},
        "cpu_count": os.cpu_count(),
        "probes": probes,
        "types": rows,
    }
    _print(summary)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2))
    return summary


def _patch(position: str, grid: int) -> int:
    """The patch token that holds an object at `position` (a grid x grid patch layout)."""
    x, y = POSITION_CENTRES[position]
    return int(y * grid) * grid + int(x * grid)


def _probe(features: torch.Tensor, labels: list[int]) -> float:
    """Held-out accuracy (the last 20%) of a logistic regression on `features`."""
    y = torch.tensor(labels)
    split = int(len(y) * 0.8)
    linear = torch.nn.Linear(features.shape[1], int(y.max()) + 1)
    optimiser = torch.optim.Adam(linear.parameters(), 1e-2)
    with torch.enable_grad():  # callers hold no_grad for the frozen model
        for _ in range(400):
            loss = F.cross_entropy(linear(features[:split]), y[:split])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        return round(float((linear(features[split:]).argmax(-1) == y[split:]).float().mean()), 3)


@torch.no_grad()
def _patch_probes(loaded, scenes) -> dict[str, float]:
    model = loaded.model
    _, tokens = model.visual(torch.stack([loaded.preprocess(s.image(IMAGE_SIZE)) for s in scenes]))
    tokens = model.text_decoder.cross_attn[-1].ln_1_kv(tokens)  # what the decoder's keys are made from
    grid = int(round(tokens.shape[1] ** 0.5))
    at = [(i, o) for i, s in enumerate(scenes) for o in s.graph.objects]
    features = torch.stack([tokens[i, _patch(o.position, grid)] for i, o in at])
    return {
        "patch token -> object shape": _probe(features, [SHAPES.index(o.shape) for _, o in at]),
        "patch token -> object colour": _probe(features, [list(COLOURS).index(o.colour) for _, o in at]),
    }


_ONE_OBJECT = re.compile(r"^is there a (?:small |large )?(\w+) (\w+)(?: (?:at|on|in) the \w+)?\?$")


@torch.no_grad()
def _question_probes(loaded, scenes) -> dict[str, float]:
    """A presence question's colour and shape words, read from the state that predicts its answer: the questions
    about one object named by its colour and shape ("is there a small red circle on the left?")."""
    model, tokenizer = loaded.model, loaded.tokenizer
    named = [
        (qa, found)
        for s in scenes
        for qa in s.questions
        if qa.type == "presence" and (found := _ONE_OBJECT.match(qa.question)) and found[1] in COLOURS
    ]
    asked = [qa for qa, found in named if found[2] in SHAPES]
    words = [(found[1], found[2]) for _, found in named if found[2] in SHAPES]
    texts = tokenizer([vqa_text(qa.question, qa.answer) for qa in asked])
    at_answer = _answer_positions(texts) - 1
    states = model.text(texts)[1][torch.arange(len(texts)), at_answer]
    return {
        "question words at the answer (text tower) -> colour": _probe(
            states, [list(COLOURS).index(c) for c, _ in words]
        ),
        "question words at the answer (text tower) -> shape": _probe(states, [SHAPES.index(s) for _, s in words]),
    }


def _answer_positions(texts: torch.Tensor) -> torch.Tensor:
    # Every world answer is one token (_learn checks): it sits just before the end token.
    return (texts != PAD_ID).sum(dim=1) - 2


def _learn(model, loaded, kind: str, train_scenes, test, args) -> list[dict]:
    """Train on `kind`'s questions of the training scenes; the held-out loss and accuracy on `test` as it goes."""
    for parameter in model.visual.parameters():
        parameter.requires_grad = False
    items = [(s, qa) for s in train_scenes for qa in s.questions if qa.type == kind]
    random.Random(0).shuffle(items)
    answers = sorted({qa.answer for _, qa in items + test})
    if ((loaded.tokenizer(answers) != PAD_ID).sum(dim=1) != 3).any():  # start, the answer, end
        raise SystemExit(f"{kind}: an answer is more than one token for this tokenizer; the bench scores one")
    image_tokens: dict[str, torch.Tensor] = {}  # the frozen tower's output, computed once per scene

    def batch(chosen):
        new = list({scene.id: scene for scene, _ in chosen if scene.id not in image_tokens}.values())
        if new:
            with torch.no_grad():
                _, tokens = model.visual(torch.stack([loaded.preprocess(scene.image(IMAGE_SIZE)) for scene in new]))
            image_tokens.update(zip((scene.id for scene in new), tokens))
        texts = loaded.tokenizer([vqa_text(qa.question, qa.answer) for _, qa in chosen])
        answer = _answer_positions(texts)
        rows = torch.arange(len(texts))
        # CoCa's teacher-forced forward, projected to the vocabulary at the answer only.
        states = decoder_states(
            model.text_decoder, torch.stack([image_tokens[s.id] for s, _ in chosen]), model.text(texts)[1][:, :-1]
        )
        logits = model.text_decoder.ln_final(states[rows, answer - 1]) @ model.text_decoder.text_projection
        wanted = texts[rows, answer]
        return F.cross_entropy(logits.float(), wanted), float((logits.argmax(-1) == wanted).float().mean())

    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    curve = []
    for step in range(args.steps + 1):
        if step % max(1, args.steps // 6) == 0 or step == args.steps:
            model.eval()
            with torch.no_grad():
                loss, accuracy = batch(test)
            curve.append({"step": step, "heldout_loss": round(float(loss), 3), "heldout_accuracy": round(accuracy, 3)})
        if step == args.steps:
            break
        model.train()
        start = step * args.batch_size
        loss, _ = batch([items[(start + i) % len(items)] for i in range(args.batch_size)])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return curve


def _reset_text_side(model, model_cfg: dict) -> None:
    """Random weights for the text tower and decoder, as open_clip starts them (the image tower is kept)."""
    import open_clip

    plain, _ = split_model_cfg(model_cfg)
    fresh = open_clip.create_model(register_plain(plain))
    model.text.load_state_dict(fresh.text.state_dict())
    model.text_decoder.load_state_dict(fresh.text_decoder.state_dict())
    with torch.no_grad():  # open_clip leaves CoCa's vocabulary projection unfilled (torch.empty)
        projection = model.text_decoder.text_projection
        projection.normal_(std=projection.shape[0] ** -0.5)


def _asked(kind: str, heldout) -> list:
    """The (scene, question) pairs accuracy is measured on: the first 200 of the type."""
    return [(s, qa) for s in heldout for qa in s.questions if qa.type == kind][:200]


def _prior(test) -> float:
    """The share of the commonest answer among the measured questions: what answering blind reaches."""
    answers = Counter(qa.answer for _, qa in test)
    return round(answers.most_common(1)[0][1] / sum(answers.values()), 3)


def _print(summary: dict) -> None:
    print("| probe (frozen model) | held-out accuracy |\n|---|---|")
    for name, accuracy in summary["probes"].items():
        print(f"| {name} | {accuracy:.3f} |")
    steps = [point["step"] for point in summary["types"][0]["curve"]]
    print("\n| question type | prior | " + " | ".join(f"step {s}" for s in steps) + " |")
    print("|---|---|" + "---|" * len(steps))
    for row in summary["types"]:
        cells = " | ".join(f"{p['heldout_accuracy']:.3f}" for p in row["curve"])
        print(f"| {row['type']} | {row['prior']:.3f} | {cells} |")


if __name__ == "__main__":
    main()
