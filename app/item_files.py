"""Serving an item's image only while it is still the file that was indexed.

The index records each item's location and sha256; between the build and a request the file may have been
replaced (a symlink to /etc/shadow, another picture). A local file is served only when its real path stays under
the indexed root (or, for a list file's absolute paths outside it, is the recorded path itself, no symlink on
the way), it is a regular file opened without following a last-moment symlink, and its bytes hash to the
recorded sha256. Hashing every request would cost a full read and hash, so a verified file's (device, inode,
size, mtime, ctime) is remembered per index version and item: while they are unchanged the file is not hashed
again (ctime cannot be set back from user space). The bytes served are the bytes read and checked.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections import OrderedDict
from pathlib import Path
from threading import Lock

from xmodal.indexer.reader import OpenIndex

Signature = tuple[int, int, int, int, int]


class ItemFileError(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


class ItemFiles:
    """The verified-file cache of one server (thread-safe: reads run in the thread pool)."""

    def __init__(self, max_entries: int = 100_000):
        self.max_entries = max_entries
        self._verified: OrderedDict[tuple[str, int], Signature] = OrderedDict()
        self._lock = Lock()
        self.hashed = 0  # files hashed so far (for tests and curiosity)

    def item_bytes(self, index: OpenIndex, item_id: int) -> bytes | str:
        """Item `item_id`'s image as indexed: a local file's bytes (read), a tar member's (check_member), or the
        http(s) URL it was indexed from, which is not fetched; ItemFileError 404 when there is none."""
        content = index.item_content(item_id)
        if content is None:
            raise ItemFileError(404, f"no image file for item {item_id} (unknown id, or the file was moved)")
        if isinstance(content, str):
            return content
        if isinstance(content, bytes):  # a webdataset tar member
            return check_member(index, item_id, content)
        return self.read(index, item_id, content)

    def read(self, index: OpenIndex, item_id: int, path: Path) -> bytes:
        """The bytes of item `item_id`'s file at `path` (from `index.item_content`), or ItemFileError:
        404 when it is gone, 409 when it is no longer the file that was indexed."""
        expected = index.items.column("sha256")[item_id].as_py()
        real = Path(os.path.realpath(path))
        root = Path(index.source)
        if path.is_relative_to(root):
            if not real.is_relative_to(os.path.realpath(root)):
                raise ItemFileError(409, f"item {item_id}'s file now leads out of the indexed folder; reindex")
        elif real != path:
            raise ItemFileError(409, f"item {item_id}'s file is now reached through a symlink; reindex")
        try:
            fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError as exc:
            raise ItemFileError(404, f"item {item_id}'s file is gone (moved or deleted); reindex") from exc
        except OSError as exc:  # ELOOP: swapped for a symlink after the check above; EACCES and the like
            raise ItemFileError(409, f"item {item_id}'s file cannot be opened as indexed: {exc.strerror}") from exc
        with os.fdopen(fd, "rb") as handle:
            before = os.fstat(handle.fileno())
            if not stat.S_ISREG(before.st_mode):
                raise ItemFileError(409, f"item {item_id}'s file is no longer a regular file; reindex")
            data = handle.read()
            after = os.fstat(handle.fileno())
        signature = _signature(after)
        key = (str(index.version), item_id)
        with self._lock:
            known = self._verified.get(key)
        if known == signature == _signature(before) and len(data) == before.st_size:
            return data
        self.hashed += 1
        if expected is None or hashlib.sha256(data).hexdigest() != expected:
            raise ItemFileError(409, f"item {item_id}'s file changed since it was indexed; reindex")
        with self._lock:
            self._verified[key] = signature
            self._verified.move_to_end(key)
            while len(self._verified) > self.max_entries:
                self._verified.popitem(last=False)
        return data


def check_member(index: OpenIndex, item_id: int, data: bytes) -> bytes:
    """A webdataset member's bytes when they still hash to the recorded sha256 (they are in memory anyway)."""
    expected = index.items.column("sha256")[item_id].as_py()
    if expected is None or hashlib.sha256(data).hexdigest() != expected:
        raise ItemFileError(409, f"item {item_id}'s tar member changed since it was indexed; reindex")
    return data


def _signature(st: os.stat_result) -> Signature:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
