"""Lay files out the way the Hugging Face hub cache does, to test offline loading."""

from __future__ import annotations

import shutil
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fill_hub_cache(cache: Path, repo: str, files: dict[str, Path]) -> Path:
    """cache/models--org--repo/{refs/main, blobs/, snapshots/<commit>/<name> -> blob}."""
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo_dir / "blobs").mkdir(exist_ok=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(COMMIT)
    for name, source in files.items():
        blob = repo_dir / "blobs" / f"blob-{name}"
        shutil.copyfile(source, blob)
        (snapshot / name).symlink_to(blob)
    return snapshot
