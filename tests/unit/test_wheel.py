"""The built wheel installs one package, `xmodal`, and its HTTP client imports without torch.

The wheel goes into a fresh venv with `--no-deps`; the project's dependencies come from this venv's
site-packages, appended to the fresh venv's path (a .pth file), so nothing is downloaded and the checkout's
own folders are never on the path.
"""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a copy: setuptools' build/lib keeps files that the checkout has since removed.
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("app", "indexer", "models"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
        cwd=out,
    )
    (built,) = out.glob("xmodal-*.whl")
    return built


@pytest.fixture(scope="module")
def venv_python(wheel, tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )
    (purelib,) = (venv / "lib").glob("python3*/site-packages")
    # Dependencies from this venv; .pth files in an appended folder are not read, so its editable
    # install of the checkout stays out.
    (purelib / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def _run(python: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=cwd)


def test_wheel_holds_one_top_level_package_with_its_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"xmodal"}
    for needed in ("xmodal/app/main.py", "xmodal/app/static/index.html", "xmodal/indexer/store.py"):
        assert needed in names
    assert any(name.startswith("xmodal/models/configs/") and name.endswith(".json") for name in names)


def test_installed_wheel_imports_as_xmodal_and_not_as_app(venv_python, tmp_path):
    found = _run(
        venv_python,
        "import xmodal.app.main, xmodal.indexer.store, xmodal.models.images as m; print(m.__file__)",
        tmp_path,
    )
    assert found.returncode == 0, found.stderr
    assert str(venv_python.parents[1]) in found.stdout  # the installed copy, not the checkout
    for generic in ("app", "indexer", "models"):
        missing = _run(venv_python, f"import {generic}", tmp_path)
        assert "ModuleNotFoundError" in missing.stderr, (generic, missing.stdout, missing.stderr)


def test_http_client_imports_without_torch(venv_python, tmp_path):
    code = "import sys; sys.modules['torch'] = None; from xmodal.app.client import XmodalClient; print('ok')"
    result = _run(venv_python, code, tmp_path)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr
