"""What to index, as a stable, ordered list of records, from any kind of source.

- a folder: image files under it, recursively (key = path relative to the folder);
- a list file: .txt (one path or URL a line), .csv or .parquet with a `path`, `url` or `image` column,
  optional `caption` and any other columns (kept as metadata and returned by search); key = the path
  relative to the list's folder (or the URL, or the absolute path when outside it);
- webdataset shards: a .tar file, or a folder holding only .tar files, of `KEY.jpg` + `KEY.txt` /
  `KEY.json` members (key = `shard.tar/KEY`).
Relative paths in a list resolve against the list file's folder.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from xmodal.models.images import IMAGE_SUFFIXES, is_image_path

LOCATION_COLUMNS = ("path", "url", "image")
CAPTION_COLUMNS = ("caption", "text")


@dataclass(frozen=True)
class Record:
    key: str  # unique and stable across runs: what resume, update and duplicates match on
    location: str  # a local path, an http(s) URL, or "shard.tar::member"
    captions: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def is_url(self) -> bool:
        return self.location.startswith(("http://", "https://"))


@dataclass
class Source:
    root: str  # what the index's item paths are relative to (manifest "source")
    records: list[Record]
    ignored: list[str]  # entries that are not images, never opened
    kind: str


def open_source(path: Path) -> Source:
    path = Path(path)
    if path.is_dir():
        shards = sorted(path.glob("*.tar"))
        if shards and all(p.suffix == ".tar" for p in path.iterdir() if p.is_file()):
            return _webdataset(path, shards)
        return _folder(path)
    if not path.exists():
        raise FileNotFoundError(f"image source {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".tar":
        return _webdataset(path.parent, [path])
    if suffix in (".txt", ".csv", ".parquet"):
        return _list_file(path)
    raise ValueError(f"unsupported source {path}: give a folder, a .txt/.csv/.parquet list or .tar shards")


def _folder(root: Path) -> Source:
    root = root.resolve()
    files = sorted(
        (
            p
            for p in root.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        ),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    records = [Record(p.relative_to(root).as_posix(), str(p)) for p in files if is_image_path(p)]
    ignored = [p.relative_to(root).as_posix() for p in files if not is_image_path(p)]
    return Source(str(root), records, ignored, "folder")


def _list_file(path: Path) -> Source:
    path = path.resolve()
    rows = _read_rows(path)
    location_column = next((c for c in LOCATION_COLUMNS if rows and c in rows[0]), None)
    if rows and location_column is None:
        raise ValueError(f"{path} needs a column named one of {', '.join(LOCATION_COLUMNS)}")
    records, seen = [], set()
    for row in rows:
        location = str(row.pop(location_column) or "").strip()
        if not location or location in seen:  # a repeated row adds nothing
            continue
        seen.add(location)
        captions = tuple(c for c in (str(row.pop(name, "") or "").strip() for name in CAPTION_COLUMNS) if c)
        key = location
        if not location.startswith(("http://", "https://")):
            local = (path.parent / location).resolve()
            key = local.relative_to(path.parent).as_posix() if local.is_relative_to(path.parent) else str(local)
            location = str(local)
        records.append(Record(key, location, captions, {k: v for k, v in row.items() if v not in (None, "")}))
    return Source(str(path.parent), records, [], "list")


def _read_rows(path: Path) -> list[dict]:
    if path.suffix.lower() == ".parquet":
        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".txt":
        return [{"path": line.strip()} for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return list(csv.DictReader(io.StringIO(text)))


def _webdataset(root: Path, shards: list[Path]) -> Source:
    """Group each shard's members by key: one image, plus an optional .txt caption or .json metadata."""
    root = root.resolve()
    records, ignored = [], []
    for shard in shards:
        groups: dict[str, dict[str, tarfile.TarInfo]] = defaultdict(dict)
        with tarfile.open(shard) as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            for member in members:
                key, dot, ext = member.name.partition(".")
                groups[key][ext.lower()] = member
            for key in sorted(groups):
                parts = groups[key]
                image_ext = next((ext for ext in parts if f".{ext}" in IMAGE_SUFFIXES), None)
                name = f"{shard.relative_to(root).as_posix()}/{key}"
                if image_ext is None:
                    ignored.append(name)
                    continue
                captions, extra = _sidecars(tar, parts)
                member = parts[image_ext]
                # The member's byte range: reading it later needs no scan of the tar's headers.
                location = f"{shard.resolve()}::{member.offset_data}:{member.size}"
                records.append(Record(name, location, captions, extra))
    return Source(str(root), records, ignored, "webdataset")


def _sidecars(tar: tarfile.TarFile, parts: dict[str, tarfile.TarInfo]) -> tuple[tuple[str, ...], dict]:
    captions: tuple[str, ...] = ()
    extra: dict = {}
    if "txt" in parts:
        text = _member_bytes(tar, parts["txt"]).decode("utf-8", "replace").strip()
        captions = (text,) if text else ()
    if "json" in parts:
        try:
            loaded = json.loads(_member_bytes(tar, parts["json"]))
        except (json.JSONDecodeError, UnicodeDecodeError):
            loaded = {}
        if isinstance(loaded, dict):
            caption = loaded.pop("caption", None)
            if isinstance(caption, str) and caption.strip() and not captions:
                captions = (caption.strip(),)
            extra = {k: v for k, v in loaded.items() if isinstance(v, (str, int, float, bool))}
    return captions, extra


def read_record_bytes(record: Record) -> bytes:
    """The bytes of a local or tar record (URLs are fetched by indexer.download first)."""
    if "::" in record.location and not record.is_url:
        shard, byte_range = record.location.split("::", 1)
        offset, size = map(int, byte_range.split(":"))
        with open(shard, "rb") as handle:
            handle.seek(offset)
            return handle.read(size)
    return Path(record.location).read_bytes()


def read_captions(csv_path: Path) -> dict[str, list[str]]:
    """`image,caption` rows → {image name: [captions]}; other columns are ignored."""
    captions: dict[str, list[str]] = defaultdict(list)
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"image", "caption"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{csv_path} needs the columns image,caption (missing: {', '.join(sorted(missing))})")
        for row in reader:
            text = (row["caption"] or "").strip()
            if row["image"] and text:
                captions[row["image"].strip()].append(text)
    return dict(captions)


def captions_for(key: str, captions: dict[str, list[str]]) -> list[str]:
    """Captions keyed by the record key (path relative to the source), or by the file name alone."""
    return captions.get(key) or captions.get(Path(key).name) or []


def _member_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    return handle.read() if handle is not None else b""  # None: not a regular file
