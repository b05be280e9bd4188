"""Training on the world in English and Chinese: mixed data, a learnt tokenizer, languages in the model folder."""

from __future__ import annotations

import pytest

from xmodal.models.languages import LANGUAGES_FILE
from xmodal.models.loading import load_model
from xmodal.models.text_tokenizer import TOKENIZER_FILE, TrainedTokenizer
from xmodal.models.training import TrainConfig, WorldData, train
from xmodal.models.training import tokenizer as world_tokenizer
from xmodal.models.training.datasets import WorldSource
from xmodal.models.training.examples import ExampleDataset
from xmodal.models.training.world_evaluation import WorldEvalConfig, WorldEvaluation

BILINGUAL = WorldData(scenes=48, image_size=32, languages=("en", "zh"))


def test_each_scene_comes_once_per_epoch_in_each_language():
    source = WorldSource(BILINGUAL)
    assert len(source) == 2 * len(source.indices)
    (_, english), (_, chinese) = source.load(3), source.load(len(source.indices) + 3)
    assert (english.language, chinese.language) == ("en", "zh") and english.graph == chinese.graph
    assert chinese.decoder_captions[0].count("一个") == len(chinese.graph.objects)


def test_chinese_examples_use_chinese_queries_negatives_and_prompts():
    source = WorldSource(BILINGUAL)
    dataset = ExampleDataset(source, lambda image: image, 0.5, 4, 1.0, 3, 1)
    example = dataset[(len(source.indices) + 1, "key")]
    assert all(not any(c.isascii() and c.isalpha() for c in text) for text in example.texts)
    for target, prompt in zip(example.targets, example.prompts):
        assert target.startswith("中文：") and prompt == "中文：" or target.startswith("问题：")


@pytest.fixture(scope="module")
def bilingual_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("bilingual") / "model"
    config = TrainConfig(
        output_dir=out,
        data=BILINGUAL,
        model="xmodal-tiny-coca",
        steps=3,
        batch_size=8,
        warmup_steps=1,
        cpu_threads=1,
        tokenizer="world",
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(world_tokenizer, "TRAINING_SCENES", 60)  # every word appears in 60 scenes: a fast test
        train(config, progress=False)
    return out


def test_the_model_folder_carries_its_tokenizer_and_languages(bilingual_model):
    assert (bilingual_model / TOKENIZER_FILE).is_file() and (bilingual_model / LANGUAGES_FILE).is_file()
    loaded = load_model(f"local-dir:{bilingual_model}", "cpu", threads=1)
    assert isinstance(loaded.tokenizer, TrainedTokenizer)
    assert loaded.model_cfg["text_cfg"]["vocab_size"] == loaded.tokenizer.vocab_size < 1000
    assert loaded.languages is not None and loaded.languages["zh"].caption_prefix == "中文："


def test_evaluation_reports_chinese_next_to_english(bilingual_model):
    loaded = load_model(f"local-dir:{bilingual_model}", "cpu", threads=1)
    config = WorldEvalConfig(
        scenes=30, queries=10, captions=3, questions_per_type=2, image_size=32, languages=("en", "zh")
    )
    report = WorldEvaluation(config, tokenizer=loaded.tokenizer, preprocess=loaded.preprocess).evaluate(loaded.model)
    for name in ("t2i_p@1", "i2t_r@1", "caption_exact", "vqa_generated_all", "vqa_ranked_all"):
        assert 0.0 <= report.metrics[name] <= 1.0 and 0.0 <= report.metrics[f"{name}_zh"] <= 1.0
    assert report.examples["vqa_ranked_zh"][0]["question"].endswith("？")


def test_a_world_tokenizer_needs_world_data_and_english_only_writes_no_language_file(tmp_path):
    with pytest.raises(ValueError, match="WorldData"):
        from xmodal.models.training import CsvData

        TrainConfig(output_dir=tmp_path, data=CsvData(captions_csv=tmp_path / "c.csv"), tokenizer="world")
    assert world_tokenizer.model_languages(WorldData()) is None


def test_evaluation_without_the_model_s_tokenizer_is_refused(bilingual_model):
    loaded = load_model(f"local-dir:{bilingual_model}", "cpu", threads=1)
    evaluation = WorldEvaluation(WorldEvalConfig(scenes=10, queries=5, captions=0, questions_per_type=0, image_size=32))
    with pytest.raises(ValueError, match="own tokenizer"):
        evaluation.evaluate(loaded.model)
