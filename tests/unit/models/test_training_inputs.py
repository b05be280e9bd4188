"""What world training batches teach: binding negatives and twins, balanced questions, where to look; the stem."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import open_clip
import pytest
import torch

from xmodal.models.registry import register_configs
from xmodal.models.training import WorldData
from xmodal.models.training.batches import TWIN, StepBatches
from xmodal.models.world import World, satisfies, scene_query, swap_attribute

TINY_WORLD = WorldData(scenes=64, image_size=32)


def _dataset(scenes: int = 24, **options):
    from xmodal.models.training.datasets import WorldSource
    from xmodal.models.training.examples import ExampleDataset

    return ExampleDataset(
        WorldSource(replace(TINY_WORLD, scenes=scenes)), lambda image: torch.zeros(3, 4, 4), **options
    )


def _multiset(graph) -> list[Counter]:
    """Per attribute, the values the scene's objects hold (what a swap must keep)."""
    return [Counter(o.attributes[k] for o in graph.objects) for k in range(4)]


def test_swaps_exchange_one_attribute_between_two_objects_of_the_scene():
    rng = random.Random(0)
    swapped = 0
    for scene in World(seed=0).scenes(200):
        other = swap_attribute(scene.graph, rng)
        if other is None:  # one object, or identical ones: nothing to swap
            assert len({o.attributes[:3] for o in scene.graph.objects}) == 1
            continue
        swapped += 1
        assert _multiset(other) == _multiset(scene.graph)  # the same words ...
        assert not satisfies(other, scene_query(scene.graph))  # ... bound differently
        before = {o.position: o.attributes for o in scene.graph.objects}
        after = {o.position: o.attributes for o in other.objects}
        changed = [p for p in before if before[p] != after.get(p)]
        assert len(changed) == 2  # exactly two objects differ
        assert [o.position for o in other.objects] == sorted(
            after, key=("top", "left", "centre", "right", "bottom").index
        )
    assert swapped > 120


def test_swap_negatives_describe_no_image_of_the_batch_they_came_from():
    from xmodal.models.training.examples import Collate

    register_configs()
    dataset = _dataset(vqa_fraction=0.3, swap_negatives=1)
    examples = [dataset[(i, f"0:1:{i}")] for i in range(24)]
    batch = Collate(open_clip.get_tokenizer("xmodal-tiny-coca"))(examples)
    assert batch.texts.shape[0] == 48
    for i, example in enumerate(examples):
        negative = example.queries[1]
        assert negative.exact and batch.complete[2 * i + 1]
        assert not batch.positives[2 * i + 1, i]  # never its own image
        assert batch.positives[2 * i + 1].tolist() == [satisfies(e.graph, negative) for e in examples]
        if len({o.attributes[:3] for o in example.graph.objects}) > 1:  # a real swap, not a near miss
            swapped = [o.attributes for o in example.graph.objects]
            wanted = [(q.shape, q.colour, q.size, q.position) for q in negative.objects]
            assert sorted(swapped) != sorted(wanted)
            assert [Counter(a[k] for a in swapped) for k in range(4)] == [
                Counter(a[k] for a in wanted) for k in range(4)
            ]


def test_twins_are_the_previous_scene_swapped_and_are_its_hard_negatives():
    from xmodal.models.training.examples import Collate

    register_configs()
    plan = StepBatches(size=24, batch_size=16, seed=0, start=0, end=1, twin_fraction=1.0)
    keys = plan.batch(1)
    assert all(keys[j][0] == keys[j - 1][0] and keys[j][1].endswith(TWIN) for j in range(1, 16, 2))
    assert not any(key.endswith(TWIN) for _, key in keys[::2])
    dataset = _dataset(vqa_fraction=0.3, query_fraction=1.0, contrastive_texts=2)
    examples = [dataset[key] for key in keys]
    batch = Collate(open_clip.get_tokenizer("xmodal-tiny-coca"))(examples)
    twins = 0
    for j in range(1, 16, 2):
        original, twin = examples[j - 1].graph, examples[j].graph
        if twin != original:
            twins += 1
            assert not satisfies(twin, scene_query(original))
            assert not batch.positives[2 * (j - 1), j]  # the original's caption does not describe its twin
        # Every text is marked by ground truth, twins included.
        for t in range(2 * (j - 1), 2 * (j + 1)):
            query = [q for e in examples for q in e.queries][t]
            assert batch.positives[t].tolist() == [satisfies(e.graph, query) for e in examples]
    assert twins >= 6
    # A twin draw depends on the step only, so resumed runs see the same batches.
    assert StepBatches(24, 16, 0, 0, 1, twin_fraction=0.5).batch(1) == StepBatches(24, 16, 0, 0, 1, 0.5).batch(1)
    assert sum(k.endswith(TWIN) for _, k in StepBatches(24, 16, 0, 0, 1, 0.5).batch(1)) < 8


def test_question_targets_come_in_every_type_equally_often():
    from xmodal.models.training.datasets import WorldSource
    from xmodal.models.training.examples import QUESTION_MARK

    source = WorldSource(replace(TINY_WORLD, scenes=32))
    dataset = _dataset(scenes=32, vqa_fraction=0.0, qa_targets=8)
    kinds: Counter = Counter()
    for i in range(32):
        example = dataset[(i, f"0:1:{i}")]
        assert len(example.targets) == 9 and example.targets[0] in example.captions
        # "question:" is context, never taught: the decoder keeps writing captions unprompted.
        assert example.prompts == ("",) + (QUESTION_MARK,) * 8
        _, texts = source.load(i)
        by_text = {f"question: {q} answer: {a}": t for (q, a), t in zip(texts.questions, texts.question_types)}
        kinds.update(by_text[t] for t in example.targets[1:])
    assert set(kinds) == {"colour", "shape", "size", "position", "count", "presence"}
    # 256 draws over 6 types (43 each on average); by frequency in the scenes' question lists,
    # colour would get about 7 times as many as presence.
    assert max(kinds.values()) < 2 * min(kinds.values())


def test_question_targets_say_where_their_answer_is():
    from xmodal.models.training.examples import PLACES, Collate
    from xmodal.models.world import NOWHERE

    dataset = _dataset(scenes=24, vqa_fraction=0.0, qa_targets=2)
    examples = [dataset[(i, f"0:1:{i}")] for i in range(24)]
    batch = Collate(open_clip.get_tokenizer("xmodal-small-coca"))(examples)
    rows = [(e, target, where) for e in examples for target, where in zip(e.targets, e.where)]
    assert batch.where is not None and batch.where.shape == (len(rows), len(PLACES))
    nowhere = 0
    for (example, target, where), marked in zip(rows, batch.where):
        assert [p for p, m in zip(PLACES, marked.tolist()) if m] == sorted(where, key=PLACES.index)
        if not target.startswith("question:"):
            assert where == ()  # a caption has no one place to look
        elif where == (NOWHERE,):
            nowhere += 1
            assert target.endswith(("answer: no", "answer: 0")), target
        else:
            # Every place named holds an object of the scene the question is about.
            assert where and set(where) <= {o.position for o in example.graph.objects}, target
    assert nowhere > 0


@pytest.mark.parametrize("channels", [[8], [8, 16]])
def test_a_vision_stem_keeps_the_patch_grid_and_survives_saving(tmp_path, channels):
    from xmodal.models.loading import load_model
    from xmodal.models.model_dir import save_model_dir
    from xmodal.models.registry import _STEMS, register_plain
    from xmodal.models.vision_stem import STEM_KEY, ConvStem

    register_configs()
    register_plain(open_clip.get_model_config("xmodal-tiny-coca"), "test-stem-coca")
    _STEMS["test-stem-coca"] = {"channels": channels}
    loaded = load_model("test-stem-coca", "cpu")
    visual = loaded.model.visual
    assert isinstance(visual.conv1, ConvStem) and loaded.model_cfg[STEM_KEY] == {"channels": channels}
    images = torch.randn(2, 3, 32, 32)
    assert visual.conv1(images).shape == (2, 32, 4, 4)  # width x the 8-px patch grid, as the linear embedding
    save_model_dir(loaded.model, loaded.model_cfg, loaded.preprocess_cfg, tmp_path / "model")
    reloaded = load_model(f"local-dir:{tmp_path / 'model'}", "cpu")
    assert reloaded.fingerprint == loaded.fingerprint and isinstance(reloaded.model.visual.conv1, ConvStem)
    with torch.no_grad():
        assert torch.equal(reloaded.model.encode_image(images), loaded.model.encode_image(images))
