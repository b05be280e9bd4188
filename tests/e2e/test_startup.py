"""How `xmodal serve` starts, refuses to start, and reports loading over /readyz."""

from __future__ import annotations

import httpx
import pytest

from xmodal.app.testing import Server, run_xmodal

pytestmark = pytest.mark.e2e


def test_serve_refuses_an_index_built_with_other_weights(coco_index_dir, tiny_clip_dir, tmp_path):
    server = Server(coco_index_dir, tmp_path / "log", env={"XMODAL_MODEL": f"local-dir:{tiny_clip_dir}"})
    code = server.process.wait(timeout=120)
    server.stop()
    assert code == 1
    assert "was built with" in server.log() and "meaningless" in server.log()


def test_readyz_is_503_with_the_reason_while_the_model_cannot_load(coco_index_dir, tmp_path):
    env = {"XMODAL_MODEL": f"local-dir:{tmp_path / 'absent'}", "XMODAL_EXIT_ON_LOAD_FAILURE": "false"}
    with Server(coco_index_dir, tmp_path / "log", env=env) as server:
        server.wait_listening()
        for _ in range(300):
            ready = httpx.get(server.url + "/readyz")
            if ready.json()["status"] != "loading":
                break
        assert ready.status_code == 503 and ready.json()["status"] == "failed"
        assert "open_clip_config.json" in ready.json()["detail"]
        search = httpx.post(server.url + "/v1/search/text", json={"text": "dog"})
        assert search.status_code == 503 and "not ready" in search.json()["detail"]
        assert httpx.get(server.url + "/healthz").status_code == 200


def test_image_to_text_needs_captions(tiny_coca_dir, tmp_path):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (48, 48), (80 * i, 20, 200)).save(folder / f"{i}.png")
    built = run_xmodal(
        "index",
        folder,
        "--out",
        tmp_path / "index",
        "--model",
        f"local-dir:{tiny_coca_dir}",
        "--workers",
        "0",
        "--no-progress",
    )
    assert built.returncode == 0, built.stderr
    with Server(tmp_path / "index", tmp_path / "log") as server:
        server.wait_ready()
        photo = {"file": ("0.png", (folder / "0.png").read_bytes(), "image/png")}
        response = httpx.post(server.url + "/v1/search/image", files=photo, data={"target": "texts"})
        assert response.status_code == 422 and "--captions" in response.json()["detail"]
        assert (
            httpx.post(server.url + "/v1/search/text", json={"text": "blue", "k": 1000}).json()["results"].__len__()
            == 3
        )


def test_cli_errors_are_readable(tmp_path):
    missing = run_xmodal("index", tmp_path / "nope", "--out", tmp_path / "out", "--model", "xmodal-tiny-coca")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    offline = run_xmodal("index", tmp_path, "--out", tmp_path / "out", env={"XMODAL_OFFLINE": "1"})
    assert offline.returncode == 2 and "no image files" in offline.stderr
    no_index = run_xmodal("serve")
    assert no_index.returncode == 2 and "--index" in no_index.stderr
    assert "Embed every image" in run_xmodal("index", "--help").stdout
