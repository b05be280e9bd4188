"""`xmodal caption --language` and `xmodal ask --language` on a model that writes English and Chinese."""

from __future__ import annotations

from typer.testing import CliRunner


def test_cli_caption_and_ask_take_a_language(tiny_bilingual_coca_dir, tmp_path):
    from PIL import Image

    from xmodal.app.cli import cli

    image = tmp_path / "red.png"
    Image.new("RGB", (32, 32), (220, 30, 30)).save(image)
    runner = CliRunner()
    model = f"--model=local-dir:{tiny_bilingual_coca_dir}"
    result = runner.invoke(cli, ["caption", str(image), model, "--device=cpu", "--language=zh", "--max-tokens=3"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{image}\t")
    result = runner.invoke(cli, ["ask", str(image), "星形是什么颜色？", model, "--device=cpu", "--answers=红色,蓝色"])
    assert result.exit_code == 0 and {line.split("\t")[0] for line in result.output.splitlines()[1:]} == {
        "红色",
        "蓝色",
    }
    result = runner.invoke(cli, ["caption", str(image), model, "--device=cpu", "--language=fr"])
    assert result.exit_code == 2 and "not 'fr'" in result.output


def test_train_in_two_languages_then_evaluate_in_both(tmp_path, monkeypatch):
    import json

    from xmodal.app.cli import cli
    from xmodal.models.training import tokenizer as world_tokenizer

    monkeypatch.setattr(world_tokenizer, "TRAINING_SCENES", 60)  # every world word appears in 60 scenes
    runner = CliRunner()
    out = tmp_path / "model"
    train = ["train", "--out", str(out), "--scenes", "24", "--model", "xmodal-tiny-coca", "--steps", "2"]
    train += ["--batch-size", "8", "--warmup", "1", "--threads", "1", "--workers", "0", "--eval-scenes", "10"]
    train += ["--languages", "en,zh", "--tokenizer", "world", "--no-progress"]
    result = runner.invoke(cli, train)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "languages.json").read_text()).keys() == {"en", "zh"}
    result = runner.invoke(
        cli,
        ["eval", "--model", f"local-dir:{out}", "--out", str(tmp_path / "eval"), "--scenes", "40", "--queries", "30"]
        + ["--questions-per-type", "1", "--captions", "2", "--languages", "en,zh", "--threads", "1"],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "eval.json").read_text())["world"]["metrics"]
    assert {"t2i_p@1", "t2i_p@1_zh", "caption_exact_zh", "vqa_ranked_all_zh"} <= set(metrics)
