"""The Ray build's finished parts on disk, in a folder every node sees, so a rerun redoes only what is missing.

    OUT/.ray-parts/<signature hash>/
      signature.json      what these parts belong to (source, records, model, settings)
      part-000042.npy     float16 vectors of the part's embedded rows, in row order
      part-000042.parquet one row per record of the part: global record index, key, status, skip reason,
                          sha256, size, generated caption and the fingerprint of the model that embedded it
      downloads/          fetched URLs (indexer.download)

Part k holds records [k * part_size, (k + 1) * part_size) of the ordered record list, so parts are a stable
partition: any node may write any part, in any order, and a part is the same whoever writes it. Both files
go under a temporary name and are renamed; the .parquet is renamed last and marks the part finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

PARTS = ".ray-parts"
SCHEMA = pa.schema(
    [
        ("record", pa.int64()),
        ("key", pa.string()),
        ("status", pa.string()),  # embedded, duplicate (within the part) or skipped
        ("reason", pa.string()),
        ("sha256", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("duplicate_of", pa.string()),
        ("generated_caption", pa.string()),
        ("fingerprint", pa.string()),
    ]
)


class Parts:
    def __init__(self, folder: Path):
        self.folder = folder

    @classmethod
    def open(cls, out: Path, signature: dict) -> Parts:
        """The parts folder of `signature` under OUT/.ray-parts, continuing it when it exists; parts of
        other builds (another source, model or setting) are removed."""
        root = Path(out) / PARTS
        name = hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:16]
        folder = root / name
        if root.is_dir():
            for stale in root.iterdir():
                if stale.name != name:
                    log.warning("discarding parts of a different build in %s", stale)
                    shutil.rmtree(stale, ignore_errors=True)
        if folder.is_dir():
            parts = cls(folder)
            if parts.finished():
                log.info("resuming: %d finished parts in %s", len(parts.finished()), folder)
            return parts
        folder.mkdir(parents=True)
        _write_atomically(folder / "signature.json", json.dumps(signature, sort_keys=True).encode())
        return cls(folder)

    @property
    def downloads(self) -> Path:
        return self.folder / "downloads"

    def finished(self) -> set[int]:
        return {int(p.name[5:11]) for p in self.folder.glob("part-??????.parquet")}

    def write(self, number: int, start: int, rows: list[dict], vectors: np.ndarray, fingerprint: str) -> None:
        """Part `number`: `rows` are its records' rows in order (the first is record `start`)."""
        vectors_file = self.folder / f"{_name(number)}.npy"
        tmp = vectors_file.with_name(vectors_file.name + f".{os.getpid()}.tmp")
        with open(tmp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(vectors, dtype=np.float16))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, vectors_file)
        columns = {name: [row.get(name) for row in rows] for name in SCHEMA.names}
        columns["record"] = list(range(start, start + len(rows)))
        columns["fingerprint"] = [fingerprint] * len(rows)
        table_file = self.folder / f"{_name(number)}.parquet"
        tmp = table_file.with_name(table_file.name + f".{os.getpid()}.tmp")
        pq.write_table(pa.table(columns, schema=SCHEMA), tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, table_file)

    def fingerprints(self, number: int) -> set[str]:
        column = pq.read_table(self.folder / f"{_name(number)}.parquet", columns=["fingerprint"]).column(0)
        return set(column.to_pylist())

    def read(self, number: int) -> tuple[list[dict], np.ndarray]:
        """The part's rows and its float16 vectors, memory-mapped."""
        rows = pq.read_table(self.folder / f"{_name(number)}.parquet").to_pylist()
        vectors = np.load(self.folder / f"{_name(number)}.npy", mmap_mode="r")
        return rows, vectors

    def remove(self) -> None:
        shutil.rmtree(self.folder.parent, ignore_errors=True)


def _name(number: int) -> str:
    return f"part-{number:06d}"


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
