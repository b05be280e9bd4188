"""The build journal: finished batches on disk, so a killed build continues where it stopped.

    OUT/.journal/
      signature.json      what this journal belongs to (source, records, model, settings)
      batch-000042.npz    one finished batch: its rows (JSON) and float16 vectors
      downloads/          fetched URLs (indexer.download)

Batches are fixed ranges of the ordered record list and are processed in order, so the finished
ones are always a prefix: resuming re-runs exactly the batches a clean build would, and the final
index equals a clean build's. Each file is written under a temporary name and renamed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

JOURNAL = ".journal"


class Journal:
    def __init__(self, folder: Path):
        self.folder = folder

    @classmethod
    def open(cls, out: Path, signature: dict) -> Journal:
        """The journal for `signature`, continuing a matching one or replacing a stale one."""
        folder = Path(out) / JOURNAL
        signature_file = folder / "signature.json"
        if folder.exists():
            try:
                previous = json.loads(signature_file.read_text())
            except (OSError, json.JSONDecodeError):
                previous = None
            if previous == signature:
                journal = cls(folder)
                if journal.finished_batches():
                    log.info("resuming: %d finished batches in %s", journal.finished_batches(), folder)
                return journal
            log.warning("discarding a journal from a different build in %s", folder)
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        _write_atomically(signature_file, json.dumps(signature).encode())
        return cls(folder)

    @property
    def downloads(self) -> Path:
        return self.folder / "downloads"

    def finished_batches(self) -> int:
        """How many leading batches are done (a gap would mean a foreign file; stop there)."""
        count = 0
        while (self.folder / _batch_name(count)).exists():
            count += 1
        return count

    def write_batch(self, number: int, rows: list[dict], vectors: np.ndarray) -> None:
        target = self.folder / _batch_name(number)
        tmp = target.with_name(target.name + ".tmp")
        with open(tmp, "wb") as handle:
            np.savez(
                handle,
                rows=np.frombuffer(json.dumps(rows).encode(), dtype=np.uint8),
                vectors=vectors.astype(np.float16),
            )
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)

    def read_batches(self):
        """(rows, float16 vectors) of every finished batch, in order."""
        for number in range(self.finished_batches()):
            with np.load(self.folder / _batch_name(number)) as data:
                yield json.loads(data["rows"].tobytes()), data["vectors"]

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _batch_name(number: int) -> str:
    return f"batch-{number:06d}.npz"


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
