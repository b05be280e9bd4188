"""The generated docs pages match the code, and the README's links into docs/ resolve."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "docs" / "gen_reference.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_page_lists_every_setting_as_settings_defines_it():
    gen = _generator()
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == gen.settings_page(), "docs/configuration.md is stale: run python docs/gen_reference.py"
    for name in gen.Settings.model_fields:
        assert f"`XMODAL_{name.upper()}`" in committed


def test_committed_openapi_schema_is_the_apps(monkeypatch):
    monkeypatch.setenv("XMODAL_API_KEYS", '{"0123456789abcdef": "admin"}')  # the shell's settings must not leak in
    committed = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert committed == _generator().openapi_schema(), "docs/openapi.json is stale: run python docs/gen_reference.py"


def test_readme_links_into_docs_resolve():
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\((docs/[^)#\s]+)", readme)
    assert targets, "the README links into docs/"
    missing = [t for t in targets if not (ROOT / t).is_file()]
    assert not missing, f"README links to missing files: {missing}"
    assert len(readme.encode()) < 12 * 1024, "keep the README short: reference and benchmarks belong in docs/"


def test_docs_site_builds_strictly(tmp_path):
    """Every page in the nav, no broken link or anchor (mkdocs.yml turns those into warnings; about a second)."""
    pytest.importorskip("material", reason="mkdocs-material is not installed (pip install -e '.[docs]')")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
