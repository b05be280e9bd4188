"""The trainer on the tiny configs: losses fall, the model directory reloads, resume is exact."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace

import open_clip
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from xmodal.models.registry import register_configs
from xmodal.models.training import CheckpointMismatchError, CsvData, TrainConfig, WorldData, train
from xmodal.models.training.batches import StepBatches
from xmodal.models.training.objective import Objective
from xmodal.models.training.optim import VocabAdamW
from xmodal.models.world import World, write_scenes

TINY_WORLD = WorldData(scenes=64, image_size=32)


def tiny_config(tmp_path, **overrides) -> TrainConfig:
    settings = dict(
        output_dir=tmp_path / "model",
        data=TINY_WORLD,
        model="xmodal-tiny-coca",
        steps=8,
        batch_size=16,
        lr=5e-3,
        warmup_steps=2,
        checkpoint_every=4,
        cpu_threads=1,
    )
    return TrainConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short run shared by the tests that only inspect its result."""
    # 32 scenes in batches of 32: every batch holds the whole set, so 40 steps suffice to
    # bring the contrastive loss clearly below chance.
    config = tiny_config(
        tmp_path_factory.mktemp("trained"), data=replace(TINY_WORLD, scenes=32), steps=40, batch_size=32
    )
    return config, train(config, progress=False)


def _mean(steps, key) -> float:
    return sum(h[key] for h in steps) / len(steps)


@pytest.mark.slow
def test_training_lowers_contrastive_and_caption_loss(trained):
    _, result = trained
    first, last = result.history[:5], result.history[-5:]
    for key in ("contrastive_loss", "caption_loss"):
        assert _mean(last, key) < 0.8 * _mean(first, key), key
    # below chance: the model tells the 32 images of a batch apart
    assert _mean(last, "contrastive_loss") < math.log(32)


@pytest.mark.slow
def test_model_dir_reloads_bit_identical(trained):
    config, result = trained
    reloaded = open_clip.create_model(f"local-dir:{result.output_dir}")
    final = torch.load(config.resolved_checkpoint_dir / "step-0000040.pt", weights_only=True)["state_dict"]
    state = reloaded.state_dict()
    assert state.keys() == final.keys()
    assert all(torch.equal(state[k], final[k]) for k in state)

    saved = json.loads((result.output_dir / "open_clip_config.json").read_text())
    register_configs()
    assert saved["model_cfg"] == open_clip.get_model_config("xmodal-tiny-coca")
    assert saved["preprocess_cfg"]["size"] == [32, 32]
    assert open_clip.get_model_preprocess_cfg(reloaded)["mean"] == saved["preprocess_cfg"]["mean"]


@pytest.mark.slow
def test_resume_after_a_crash_gives_the_same_weights(tmp_path):
    config = tiny_config(tmp_path / "straight")
    straight = train(config, progress=False)

    crashing = tiny_config(tmp_path / "crashed", eval_every=4)

    def crash(model, step):
        raise KeyboardInterrupt(f"simulated crash at step {step}")

    with pytest.raises(KeyboardInterrupt):
        train(crashing, progress=False, evaluate=crash)
    resumed = train(crashing, progress=False)

    assert resumed.resumed_from == 4
    assert resumed.history == straight.history
    a = load_file(straight.output_dir / "open_clip_model.safetensors")
    b = load_file(resumed.output_dir / "open_clip_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_resume_refuses_a_checkpoint_from_other_settings(tmp_path):
    config = tiny_config(tmp_path, steps=4)
    train(config, progress=False)
    with pytest.raises(CheckpointMismatchError, match="lr"):
        train(replace(config, lr=1e-4), progress=False)


def test_evaluate_hook_sees_an_eval_model_and_its_metrics_are_kept(tmp_path):
    seen = []

    def evaluate(model, step):
        seen.append((step, model.training, torch.is_grad_enabled()))
        return {"answer": 42.0}

    result = train(tiny_config(tmp_path, steps=4, eval_every=2), progress=False, evaluate=evaluate)
    assert seen == [(2, False, False), (4, False, False)]
    assert result.evaluations == ({"step": 2, "answer": 42.0}, {"step": 4, "answer": 42.0})


def test_trains_on_a_csv_with_question_rows(tmp_path):
    data_dir = tmp_path / "data"
    write_scenes(World(seed=1).scenes(12), data_dir, image_size=32)
    config = tiny_config(tmp_path, data=CsvData(data_dir / "captions.csv", data_dir / "questions.csv"), steps=2)
    result = train(config, progress=False)
    assert result.steps == 2 and all(math.isfinite(h["caption_loss"]) for h in result.history)


def test_plain_clip_trains_with_the_contrastive_loss_alone(tmp_path):
    result = train(tiny_config(tmp_path, model="xmodal-tiny-clip", steps=2), progress=False)
    assert set(result.history[0]) == {"step", "loss", "contrastive_loss", "lr"}
    assert isinstance(open_clip.create_model(f"local-dir:{result.output_dir}"), open_clip.CLIP)


TEXTS = [
    "a red circle",
    "a small blue square on the left",
    "two stars",
    "question: how many? answer: 2",
    "a large green triangle at the top and a small red circle at the bottom",
    "a shape",
    "a circle",
    "question: what colour is the square? answer: blue",
]


def _tiny_coca_batch():
    register_configs()
    torch.manual_seed(0)
    model = open_clip.create_model("xmodal-tiny-coca")
    tokenizer = open_clip.get_tokenizer("xmodal-tiny-coca")
    images = torch.randn(len(TEXTS), 3, 32, 32)
    return model, images, tokenizer(TEXTS), tokenizer


@pytest.mark.parametrize("groups", ["one", "many"])
@pytest.mark.parametrize("live_columns", ["all", "some"])
def test_objective_equals_open_clip_coca_loss(live_columns, groups, monkeypatch):
    """Length groups, packing, truncation and the zero-column shortcut leave CoCaLoss's value unchanged."""
    from xmodal.models.training import objective

    monkeypatch.setattr(objective, "GROUP_OVERHEAD", 10**6 if groups == "one" else 0)
    model, images, texts, tokenizer = _tiny_coca_batch()
    projection = model.text_decoder.text_projection
    with torch.no_grad():
        projection.normal_(std=0.2)
        if live_columns == "some":  # as after training from a zero init: most columns still zero
            keep = torch.zeros(projection.shape[1], dtype=torch.bool)
            keep[torch.randint(0, len(keep), (500,))] = True
            keep[texts[0]] = True
            projection[:, ~keep] = 0

    ours = Objective(model, contrastive_weight=1.0, caption_weight=2.0, tokenizer=tokenizer)
    assert ours.trims_texts
    losses = ours(model, images, texts, texts)
    out = model(images, texts)
    contrastive, caption = open_clip.CoCaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0)(
        out["image_features"], out["text_features"], out["logits"], out["labels"], out["logit_scale"]
    )
    assert torch.allclose(losses["contrastive_loss"], contrastive, atol=1e-5)
    assert torch.allclose(losses["caption_loss"], caption, atol=1e-5)


def test_length_groups_give_the_gradients_of_full_padding(monkeypatch):
    """Several texts per image, grouped by length, train exactly as the untrimmed batch does."""
    from xmodal.models.training import objective

    model, images, texts, tokenizer = _tiny_coca_batch()
    with torch.no_grad():
        model.text_decoder.text_projection.normal_(std=0.2)
    images = images[:4]  # two contrastive and two decoder texts per image
    positives = torch.zeros(8, 4, dtype=torch.bool)
    positives[torch.arange(8), torch.arange(8) // 2] = True
    positives[5, 0] = True  # "a shape" describes image 0 too
    complete = torch.tensor([True, True, True, True, True, False, True, True])

    def gradients(overhead: int, tokenizer, sparse=False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        monkeypatch.setattr(objective, "GROUP_OVERHEAD", overhead)
        model.zero_grad()
        losses = Objective(model, 1.0, 2.0, tokenizer, sparse_gradients=sparse)(
            model, images, texts, texts.flip(0), positives, complete
        )
        losses["loss"].backward()
        grads = {n: p.grad.to_dense() for n, p in model.named_parameters() if p.grad is not None}
        return losses["loss"].detach(), grads

    assert len(objective._length_groups(sorted((texts != 0).sum(1).tolist()), 0)) == 1
    monkeypatch.setattr(objective, "GROUP_OVERHEAD", 0)
    assert len(objective._length_groups(sorted((texts != 0).sum(1).tolist()), 0)) > 2
    full_loss, full = gradients(10**6, None)  # contrastive texts at full length, decoder texts in one group
    for sparse in (False, True):  # sparse: only the rows (columns) of the tokens used, as in training
        grouped_loss, grouped = gradients(0, tokenizer, sparse)
        assert torch.allclose(grouped_loss, full_loss, atol=1e-6)
        assert full.keys() == grouped.keys()
        for name, grad in full.items():
            assert torch.allclose(grouped[name], grad, atol=1e-6, rtol=1e-4), name
    assert model.text.token_embedding.weight.grad.is_sparse
    assert model.text_decoder.text_projection.grad.is_sparse


def test_vocab_adamw_matches_torch_adamw_bit_for_bit():
    torch.manual_seed(0)
    embedding = nn.Parameter(torch.randn(50, 4))
    projection = nn.Parameter(torch.zeros(4, 50))
    other = nn.Parameter(torch.randn(4, 4))
    reference = [nn.Parameter(p.detach().clone()) for p in (embedding, projection, other)]

    def groups(params):
        return [{"params": params[:2], "weight_decay": 0.1}, {"params": params[2:], "weight_decay": 0.0}]

    ours = VocabAdamW(groups([embedding, projection, other]), {embedding: 0, projection: 1}, lr=1e-2)
    theirs = torch.optim.AdamW(groups(reference), lr=1e-2)
    for _ in range(10):
        rows = torch.randint(0, 50, (3,))
        grads = [torch.zeros(50, 4), torch.zeros(4, 50), torch.randn(4, 4)]
        grads[0][rows] = torch.randn(3, 4)
        grads[1][:, rows] = torch.randn(4, 3)
        for params, optimizer in (((embedding, projection, other), ours), (reference, theirs)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            optimizer.step()
    for a, b in zip((embedding, projection, other), reference):
        assert torch.equal(a, b)


def test_vocab_adamw_takes_sparse_gradients():
    """Sparse gradients (one entry per use of a token, repeats summed) step like their dense sum."""
    torch.manual_seed(0)
    embedding = nn.Parameter(torch.randn(50, 4))
    projection = nn.Parameter(torch.zeros(4, 50))
    reference = [nn.Parameter(p.detach().clone()) for p in (embedding, projection)]
    ours = VocabAdamW(
        [{"params": [embedding, projection], "weight_decay": 0.1}], {embedding: 0, projection: 1}, lr=1e-2
    )
    theirs = torch.optim.AdamW([{"params": reference, "weight_decay": 0.1}], lr=1e-2)
    for _ in range(10):
        rows = torch.randint(0, 50, (6,))  # with repeats
        values = torch.randn(6, 4)
        embedding.grad = torch.sparse_coo_tensor(rows[None], values, (50, 4), check_invariants=True)
        columns = torch.stack([torch.arange(4).repeat_interleave(6), rows.repeat(4)])
        projection.grad = torch.sparse_coo_tensor(columns, values.T.reshape(-1), (4, 50), check_invariants=True)
        for p, grad in zip(reference, (embedding.grad, projection.grad)):
            p.grad = grad.to_dense()
        ours.step()
        theirs.step()
    for a, b in zip((embedding, projection), reference):
        assert torch.allclose(a, b, atol=1e-6)


def test_batches_depend_only_on_the_step():
    full = StepBatches(size=10, batch_size=4, seed=3, start=0, end=6)
    tail = StepBatches(size=10, batch_size=4, seed=3, start=3, end=6)
    assert list(full)[3:] == list(tail)
    first_epoch = [i for batch in list(full)[:2] for i, _ in batch] + [i for i, _ in full.batch(3)[:2]]
    assert sorted(first_epoch) == list(range(10))  # each example once per epoch


def test_config_rejects_nonsense(tmp_path):
    with pytest.raises(ValueError):
        tiny_config(tmp_path, batch_size=1)
    with pytest.raises(ValueError):
        tiny_config(tmp_path, warmup_steps=100)
    with pytest.raises(ValueError):
        tiny_config(tmp_path, answer_loss_weight=-1.0)
    with pytest.raises(ValueError):
        tiny_config(tmp_path, attention_loss_weight=-1.0)
    with pytest.raises(ValueError):
        tiny_config(tmp_path, image_to_query_weight=-1.0)
    with pytest.raises(ValueError):
        tiny_config(tmp_path, model_overrides=(("text_cfg.layers.depth", 3),))  # neither "tower.field" nor "field"


def test_multi_positive_loss_is_clip_loss_on_the_diagonal_and_forgives_duplicates():
    from xmodal.models.training.objective import multi_positive_clip_loss

    torch.manual_seed(0)
    images = nn.functional.normalize(torch.randn(6, 8), dim=-1)
    texts = nn.functional.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(10.0)
    identity = torch.eye(6, dtype=torch.bool)
    assert torch.allclose(
        multi_positive_clip_loss(images, texts, scale, identity), open_clip.ClipLoss()(images, texts, scale)
    )
    # Images 0 and 1 show the same thing and texts 0 and 1 say the same thing. Marked as matches
    # of each other, the loss is lowest when the model gives the twins equal scores; with one
    # match each (plain CLIP), it rewards pulling the twins apart.
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])
    apart = torch.tensor([0.9553, 0.2955, 0.0])  # a turned by 0.3 rad
    marked = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])

    def loss(twin, positives):
        features = torch.stack([a, twin, b])
        return multi_positive_clip_loss(features, features, scale, positives)

    assert loss(apart, marked) > loss(a, marked)
    assert loss(apart, identity[:3, :3]) < loss(a, identity[:3, :3])


def test_images_rank_the_partial_queries_they_satisfy_first_with_a_query_weight():
    from xmodal.models.training.objective import multi_positive_clip_loss

    torch.manual_seed(0)
    images = nn.functional.normalize(torch.randn(3, 8), dim=-1)
    texts = nn.functional.normalize(torch.randn(7, 8), dim=-1)  # 3 captions, then 4 partial queries
    scale = torch.tensor(10.0)
    complete = torch.tensor([True] * 3 + [False] * 4)
    positives = torch.zeros(7, 3, dtype=torch.bool)
    positives[torch.arange(3), torch.arange(3)] = True
    positives[3, 0] = positives[4, 1] = positives[5, 2] = True
    positives[6, :2] = True  # a query images 0 and 1 satisfy
    plain = multi_positive_clip_loss(images, texts, scale, positives, complete)
    assert torch.equal(multi_positive_clip_loss(images, texts, scale, positives, complete, 0.0), plain)
    # Each image's softmax over the 4 queries alone, its target spread over those it satisfies.
    logits = (scale * images @ texts[3:].T).log_softmax(dim=1)
    wanted = positives[3:].T.float()
    term = (-(wanted * logits).sum(1) / wanted.sum(1)).mean()
    weighted = multi_positive_clip_loss(images, texts, scale, positives, complete, 0.5)
    assert torch.allclose(weighted, plain + 0.5 * term / 2)


def test_world_batches_mark_every_image_a_text_describes():
    from xmodal.models.training.datasets import WorldSource
    from xmodal.models.training.examples import Collate, ExampleDataset
    from xmodal.models.world import satisfies

    register_configs()
    dataset = ExampleDataset(
        WorldSource(replace(TINY_WORLD, scenes=24)),
        lambda image: torch.zeros(3, 4, 4),
        vqa_fraction=1.0,
        decoder_targets=3,
        query_fraction=0.5,
        contrastive_texts=2,
        hard_negatives=1,
    )
    examples = [dataset[(i, f"0:1:{i}")] for i in range(24)]
    batch = Collate(open_clip.get_tokenizer("xmodal-tiny-coca"))(examples)
    assert batch.texts.shape[0] == 72 and batch.targets.shape[0] == 72 and batch.positives.shape == (72, 24)
    queries = [q for e in examples for q in e.queries]
    for j, query in enumerate(queries):
        assert batch.positives[j].tolist() == [satisfies(e.graph, query) for e in examples]
        own = batch.positives[j, j // 3].item()
        assert own if j % 3 < 2 else not own  # its own image: yes for texts, no for the hard negative
    kinds = [queries[j::3] for j in range(3)]
    assert all(q.exact for q in kinds[0]) and all(q.exact for q in kinds[2])  # captions, near-miss captions
    assert any(not q.exact for q in kinds[1]) and any(q.exact for q in kinds[1])  # partial queries or captions
    assert batch.positives[1::3].sum() > 24  # partial queries match other images too
    assert batch.complete.tolist() == [q.exact for q in queries]
    for e in examples:
        assert e.targets[0] in e.captions and all(t.startswith("question: ") for t in e.targets[1:])


@pytest.mark.parametrize("answers_only", [True, False])
def test_question_targets_teach_only_their_answer(answers_only):
    from xmodal.models.training.datasets import WorldSource
    from xmodal.models.training.examples import Collate, ExampleDataset

    register_configs()
    tokenizer = open_clip.get_tokenizer("xmodal-tiny-coca")
    dataset = ExampleDataset(
        WorldSource(replace(TINY_WORLD, scenes=8)),
        lambda image: torch.zeros(3, 4, 4),
        vqa_fraction=0.5,
        decoder_targets=4,
        answers_only=answers_only,
    )
    examples = [dataset[(i, f"0:1:{i}")] for i in range(8)]
    batch = Collate(tokenizer)(examples)
    targets = [t for e in examples for t in e.targets]
    assert any(t.startswith("question: ") for t in targets) and any(not t.startswith("question: ") for t in targets)
    for text, tokens, taught, answer_marks in zip(targets, batch.targets, batch.taught, batch.answers):
        length = int((tokens != 0).sum())
        assert not taught[0] and not taught[length:].any()  # the start token and padding
        if text.startswith("question: "):  # answer_loss_weight applies to the answer's tokens alone
            answer = text.rsplit(" answer: ", 1)[1]
            answer_tokens = len(tokenizer([answer])[0].nonzero()) - 2  # without start and end
            assert answer_marks.nonzero().squeeze(1).tolist() == list(range(length - answer_tokens - 1, length - 1))
        else:
            assert not answer_marks.any()
        if text.startswith("question: ") and answers_only:
            assert taught.nonzero().squeeze(1).tolist() == list(range(length - answer_tokens - 1, length))
        elif text.startswith("question: "):  # all but the leading "question:", which is never taught
            assert not taught[1:3].any() and taught[3:length].all()
        else:
            assert taught[1:length].all()


def test_untaught_target_tokens_leave_the_captioning_loss():
    model, images, texts, tokenizer = _tiny_coca_batch()
    with torch.no_grad():
        model.text_decoder.text_projection.normal_(std=0.2)
    lengths = (texts != 0).sum(1)
    taught = (texts != 0) & (torch.arange(texts.shape[1])[None, :] >= (lengths // 2)[:, None])
    losses = Objective(model, 1.0, 2.0, tokenizer)(model, images, texts, texts, taught=taught)
    out = model(images, texts)
    labels = out["labels"].masked_fill(~taught[:, 1:], 0)  # CoCaLoss ignores label 0 (padding)
    _, caption = open_clip.CoCaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0)(
        out["image_features"], out["text_features"], out["logits"], labels, out["logit_scale"]
    )
    assert torch.allclose(losses["caption_loss"], caption, atol=1e-5)


def test_answer_weight_scales_the_loss_of_the_marked_tokens_only():
    model, images, texts, tokenizer = _tiny_coca_batch()
    with torch.no_grad():
        model.text_decoder.text_projection.normal_(std=0.2)
    taught = texts != 0
    none, every = torch.zeros_like(taught), taught.clone()

    def caption_loss(weight: float, answers: torch.Tensor) -> torch.Tensor:
        objective = Objective(model, 1.0, 2.0, tokenizer, answer_weight=weight)
        return objective(model, images, texts, texts, taught=taught, answers=answers)["caption_loss"]

    plain = caption_loss(1.0, every)
    assert torch.allclose(caption_loss(3.0, none), plain, atol=1e-6)  # no answer tokens: unchanged
    assert torch.allclose(caption_loss(3.0, every), 3 * plain, atol=1e-5)  # every taught token weighs 3


def test_the_attention_loss_teaches_the_first_head_where_to_look():
    from xmodal.models.registry import register_plain
    from xmodal.models.training.examples import PLACES
    from xmodal.models.training.objective import decoder_states, position_patches

    _, images, texts, tokenizer = _tiny_coca_batch()
    config = open_clip.get_model_config("xmodal-tiny-coca")
    # Without the attentional pooler, as xmodal-small-coca: the decoder attends to the 4 x 4 patches.
    config = {**config, "vision_cfg": {**config["vision_cfg"], "attentional_pool": False}}
    model = open_clip.create_model(register_plain(config))
    # One patch per world position on a 3 x 3 grid, each its own (top, left, centre, right, bottom), and
    # the corners, where no object is, for an answer about none.
    patches = position_patches(9)
    assert patches[:-1].argmax(dim=1).tolist() == [1, 3, 4, 5, 7] and patches[-1].nonzero().flatten().tolist() == [
        0,
        2,
        6,
        8,
    ]
    taught = texts != 0
    answers = torch.zeros_like(taught)
    answers[:, 3] = True  # the answer is token 3, predicted from position 2
    where = torch.zeros(len(texts), len(PLACES), dtype=torch.bool)
    where[0, PLACES.index("centre")] = True  # the first target has one place to look, the others none

    plain = Objective(model, 1.0, 2.0, tokenizer)(model, images, texts, texts, taught=taught, answers=answers)
    looking = Objective(model, 1.0, 2.0, tokenizer, attention_weight=0.5)
    losses = looking(model, images, texts, texts, taught=taught, answers=answers, where=where)
    assert "attention_loss" not in plain and torch.allclose(losses["caption_loss"], plain["caption_loss"])

    # The loss is -log of the first head's attention on the looked-at patch, at the answer's position.
    _, image_embs = model.visual(images)
    _, token_embs = model.text(texts)
    states, weights = decoder_states(
        model.text_decoder, image_embs[:1], token_embs[:1, :-1], (torch.tensor([0]), torch.tensor([2]))
    )
    assert torch.allclose(states, decoder_states(model.text_decoder, image_embs[:1], token_embs[:1, :-1]))
    grid = image_embs.shape[1]
    centre = int(position_patches(grid)[PLACES.index("centre")].argmax())
    assert torch.allclose(losses["attention_loss"], -0.5 * weights[0, 0, centre].log(), atol=1e-5)
    losses["attention_loss"].backward()
    first = model.text_decoder.cross_attn[0].attn.in_proj_weight.grad
    assert first is not None and first.abs().sum() > 0


def test_the_attention_loss_is_left_out_where_the_decoder_reads_pooled_tokens(caplog):
    model, images, texts, tokenizer = _tiny_coca_batch()  # an attentional pooler: 255 tokens, no patch grid
    objective = Objective(model, 1.0, 2.0, tokenizer, attention_weight=1.0)
    assert objective.attention_weight == 0.0 and "attention_loss_weight ignored" in caplog.text
    where = torch.ones(len(texts), 6, dtype=torch.bool)
    losses = objective(model, images, texts, texts, taught=texts != 0, answers=texts != 0, where=where)
    assert "attention_loss" not in losses


def test_model_overrides_change_the_architecture_trained_from_scratch():
    from xmodal.models.training.starting_model import load_starting_model

    register_configs()
    start = load_starting_model(
        "xmodal-tiny-coca", None, torch.device("cpu"), model_overrides=(("multimodal_cfg.layers", 3),)
    )
    assert len(start.model.text_decoder.resblocks) == 3 and start.model_cfg["multimodal_cfg"]["layers"] == 3
    with pytest.raises(ValueError, match="no 'vision'"):
        load_starting_model("xmodal-tiny-coca", None, torch.device("cpu"), model_overrides=(("vision.layers", 1),))
    # A top-level field: the contrastive temperature's starting value.
    start = load_starting_model(
        "xmodal-tiny-coca", None, torch.device("cpu"), model_overrides=(("init_logit_scale", 3.4),)
    )
    assert start.model.logit_scale.item() == pytest.approx(3.4) and start.model_cfg["init_logit_scale"] == 3.4
    with pytest.raises(ValueError, match="does not take"):
        load_starting_model("xmodal-tiny-coca", None, torch.device("cpu"), model_overrides=(("layers", 3),))
    with pytest.raises(ValueError, match="is a tower"):
        load_starting_model("xmodal-tiny-coca", None, torch.device("cpu"), model_overrides=(("text_cfg", 3),))


def test_from_scratch_vision_positions_start_at_the_configured_scale():
    from xmodal.models.training.starting_model import load_starting_model

    torch.manual_seed(0)
    default = load_starting_model("xmodal-tiny-coca", None, torch.device("cpu")).model.visual.positional_embedding
    assert default.std() < 0.3  # open_clip's width ** -0.5 (0.18 here)
    for std in (1.0, 2.0):
        torch.manual_seed(0)
        start = load_starting_model("xmodal-tiny-clip", None, torch.device("cpu"), vision_position_std=std)
        assert abs(start.model.visual.positional_embedding.std().item() - std) < 0.1 * std


def test_csv_batches_mark_images_sharing_a_caption():
    from xmodal.models.training.examples import Collate, Example

    image = torch.zeros(3, 4, 4)
    batch = Collate(open_clip.get_tokenizer("xmodal-tiny-coca"))(
        [
            Example(image, ("a dog",), ("a dog",), ("",), None, None, ("a dog", "a brown dog")),
            Example(image, ("a cat",), ("a cat",), ("",), None, None, ("a cat",)),
            Example(image, ("a brown dog",), ("a dog",), ("",), None, None, ("a brown dog",)),
        ]
    )
    assert batch.positives.tolist() == [[True, False, False], [False, True, False], [True, False, True]]


@pytest.mark.slow
def test_training_starts_from_any_model_spec(tmp_path, tiny_coca_dir):
    from xmodal.models.loading import load_model
    from xmodal.models.training.starting_model import load_starting_model

    start = load_starting_model(f"local-dir:{tiny_coca_dir}", None, torch.device("cpu"))
    assert not start.from_scratch and start.preprocess_cfg["size"] == (32, 32)
    assert start.model_cfg == open_clip.get_model_config("xmodal-tiny-coca")
    reference = load_model(f"local-dir:{tiny_coca_dir}", "cpu").model.state_dict()
    assert all(torch.equal(t, reference[k]) for k, t in start.model.state_dict().items())
    assert load_starting_model(str(tiny_coca_dir), None, torch.device("cpu")).from_scratch is False

    # A trainer checkpoint works as NAME:/path/checkpoint.pt
    config = tiny_config(tmp_path, steps=2)
    train(config, progress=False)
    checkpoint = config.resolved_checkpoint_dir / "step-0000002.pt"
    tuned = train(tiny_config(tmp_path / "tuned", model=f"xmodal-tiny-coca:{checkpoint}", steps=2), progress=False)
    assert tuned.steps == 2
    with pytest.raises(ValueError, match="pretrained"):
        load_starting_model(f"local-dir:{tiny_coca_dir}", "sometag", torch.device("cpu"))


def test_cpu_training_leaves_a_core_to_each_data_worker(tmp_path):
    from xmodal.models.training.loop import training_threads

    cores = len(os.sched_getaffinity(0))
    chosen = dict(device="cpu", cpu_threads=None)  # tiny_config pins one thread
    assert training_threads(tiny_config(tmp_path, **chosen, num_workers=0)) == cores
    assert training_threads(tiny_config(tmp_path, **chosen, num_workers=1)) == max(1, cores - 1)
    assert training_threads(tiny_config(tmp_path, **chosen, num_workers=cores + 3)) == 1
    assert training_threads(tiny_config(tmp_path, device="cpu", num_workers=1, cpu_threads=3)) == 3
