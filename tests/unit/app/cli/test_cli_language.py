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
