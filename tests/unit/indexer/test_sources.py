"""Every source kind: folders, path/URL lists (local http server), webdataset shards."""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from xmodal.indexer.build import BuildConfig, build_index
from xmodal.indexer.download import DownloadConfig
from xmodal.indexer.reader import OpenIndex
from xmodal.indexer.sources import open_source, read_record_bytes
from xmodal.models.encoders import Encoder


@pytest.fixture(scope="module")
def encoder(tiny_coca_dir) -> Encoder:
    return Encoder.from_spec(f"local-dir:{tiny_coca_dir}", "cpu")


def _png(colour=(200, 30, 30), size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


class _Handler(BaseHTTPRequestHandler):
    flaky_calls = 0

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path == "/ok.png":
            self._send(200, _png(), "image/png")
        elif self.path == "/other.png":
            self._send(200, _png((10, 200, 10)), "image/png")
        elif self.path == "/slow.png":
            time.sleep(2)
            self._send(200, _png(), "image/png")
        elif self.path == "/big.png":
            self._send(200, b"\0" * 300_000, "image/png")
        elif self.path == "/page.html":
            self._send(200, b"<html>not an image</html>", "text/html")
        elif self.path == "/flaky.png":
            type(self).flaky_calls += 1
            self._send(503, b"busy", "text/plain") if self.flaky_calls == 1 else self._send(
                200, _png((0, 0, 250)), "image/png"
            )
        else:
            self._send(404, b"missing", "text/plain")

    def _send(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # the slow URL's client hangs up by design; no traceback on stderr


@pytest.fixture
def http_server():
    server = _QuietServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_url_list_downloads_concurrently_and_records_every_failure(encoder, http_server, tmp_path):
    dead = "http://127.0.0.1:9/dead.png"  # the discard port: nothing listens
    urls = [
        f"{http_server}/ok.png",
        f"{http_server}/other.png",
        f"{http_server}/slow.png",
        f"{http_server}/big.png",
        f"{http_server}/page.html",
        f"{http_server}/flaky.png",
        f"{http_server}/gone.png",
        dead,
    ]
    listing = tmp_path / "urls.csv"
    listing.write_text("url,caption,photographer\n" + "".join(f"{u},caption {i},ann\n" for i, u in enumerate(urls)))
    download = DownloadConfig(timeout_s=0.5, retries=1, max_bytes=100_000, per_host=2)
    report = build_index(
        BuildConfig(listing, tmp_path / "index", workers=0, progress=False, download=download), encoder
    )

    indexed = {row["path"] for row in OpenIndex(tmp_path / "index").item_rows(list(range(report.indexed)))}
    assert indexed == {f"{http_server}/ok.png", f"{http_server}/other.png", f"{http_server}/flaky.png"}  # 503 retried
    reasons = report.skipped
    assert "Timeout" in reasons[f"{http_server}/slow.png"]
    assert "over the limit" in reasons[f"{http_server}/big.png"]
    assert "not an image: content type text/html" in reasons[f"{http_server}/page.html"]
    assert "HTTP 404" in reasons[f"{http_server}/gone.png"]
    assert "ConnectError" in reasons[dead]
    row = OpenIndex(tmp_path / "index").item_rows([0])[0]
    assert row["metadata"] == {"photographer": "ann"} and row["captions"] == ["caption 0"]


def test_list_files_in_txt_csv_and_parquet_with_metadata(encoder, tmp_path):
    (tmp_path / "pics").mkdir()
    for i in range(3):
        (tmp_path / "pics" / f"{i}.png").write_bytes(_png((60 * i, 90, 20)))
    (tmp_path / "list.txt").write_text("# my photos\npics/0.png\npics/1.png\n")
    pq.write_table(
        pa.table({"path": ["pics/2.png", "pics/0.png"], "caption": ["two", "zero"], "year": [2021, 2020]}),
        tmp_path / "list.parquet",
    )
    assert [r.key for r in open_source(tmp_path / "list.txt").records] == ["pics/0.png", "pics/1.png"]
    report = build_index(BuildConfig(tmp_path / "list.parquet", tmp_path / "index", workers=0, progress=False), encoder)
    rows = OpenIndex(tmp_path / "index").item_rows([0, 1])
    assert [(r["path"], r["captions"], r["metadata"]) for r in rows] == [
        ("pics/2.png", ["two"], {"year": 2021}),
        ("pics/0.png", ["zero"], {"year": 2020}),
    ]
    assert report.texts == 2
    with pytest.raises(ValueError, match="needs a column"):
        (tmp_path / "bad.csv").write_text("file\nx.png\n")
        open_source(tmp_path / "bad.csv")


def _write_shard(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards_with_txt_and_json_sidecars(encoder, tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    _write_shard(
        shards / "00000.tar",
        [
            ("a.jpg", _png()),
            ("a.txt", b"a red box"),
            ("b.png", _png((0, 0, 255))),
            ("b.json", json.dumps({"caption": "blue", "license": "cc0"}).encode()),
            ("c.txt", b"caption without an image"),
        ],
    )
    _write_shard(shards / "00001.tar", [("d.webp", b"not really webp")])
    source = open_source(shards)
    assert source.kind == "webdataset" and [r.key for r in source.records] == [
        "00000.tar/a",
        "00000.tar/b",
        "00001.tar/d",
    ]
    assert read_record_bytes(source.records[1]) == _png((0, 0, 255))
    report = build_index(BuildConfig(shards, tmp_path / "index", workers=0, progress=False), encoder)
    assert report.indexed == 2 and list(report.skipped) == ["00001.tar/d"] and report.ignored == ["00000.tar/c"]
    index = OpenIndex(tmp_path / "index")
    rows = index.item_rows([0, 1])
    assert rows[0]["captions"] == ["a red box"] and rows[1]["metadata"] == {"license": "cc0"}
    assert index.item_content(1) == _png((0, 0, 255))  # served straight from the shard
