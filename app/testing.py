"""Run the real `xmodal` command line in subprocesses: index builds and a uvicorn server on 127.0.0.1.

The end-to-end tests and the benchmarks share it, so both measure the program users run; also a Hugging
Face hub cache laid out by hand, for offline loading. Standard library and httpx only: importing it
loads no model, index or server code.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

XMODAL = str(Path(sys.executable).with_name("xmodal"))


def run_xmodal(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [XMODAL, *map(str, args)], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def package_path(checkout: Path) -> Path:
    """A folder to put on PYTHONPATH so that `import xmodal.app` reads `checkout`'s app/ (and so on), as
    the installed package maps them."""
    root = Path(tempfile.mkdtemp(prefix="xmodal-path-"))
    (root / "xmodal").mkdir()
    for name in ("app", "indexer", "models"):
        (root / "xmodal" / name).symlink_to(Path(checkout).resolve() / name)
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`xmodal serve` in a subprocess; `url` once it listens. Always stopped on exit."""

    def __init__(
        self,
        index: Path | list[str] | None,
        log_path: Path,
        env: dict | None = None,
        app_root: Path | None = None,
        command: list[str] | None = None,
    ):
        """index: one folder, or several `--index` values (`NAME=FOLDER`). app_root: serve that checkout
        (e.g. a `git archive` export) instead of the installed one: `python -m xmodal.app.cli` with its
        app/, indexer/ and models/ linked as the `xmodal` package first on PYTHONPATH.
        command: other `xmodal` arguments that end in serving (`demo`); `--port` is added."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "w")
        if command is None:
            indexes = [str(value) for value in index] if isinstance(index, list) else [str(index)]
            command = ["serve", *(arg for value in indexes for arg in ("--index", value)), "--host", "127.0.0.1"]
        program, env = [XMODAL], {**os.environ, **(env or {})}
        if app_root is not None:
            program, env = [sys.executable, "-m", "xmodal.app.cli"], {**env, "PYTHONPATH": str(package_path(app_root))}
        self.process = subprocess.Popen(
            [*program, *map(str, command), "--port", str(self.port)],
            cwd=app_root,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def wait_listening(self, timeout: float = 60) -> None:
        self._wait(lambda r: r is not None, timeout, "/healthz")

    def wait_ready(self, timeout: float = 120) -> float:
        """Seconds until /readyz said ready."""
        return self._wait(lambda r: r is not None and r.status_code == 200, timeout, "/readyz")

    def _wait(self, done, timeout: float, path: str) -> float:
        started = time.monotonic()
        while time.monotonic() < started + timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                response = httpx.get(self.url + path, timeout=2)
            except httpx.TransportError:
                response = None
            if done(response):
                return time.monotonic() - started
            time.sleep(0.2)
        raise TimeoutError(f"server not up after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        """The log once it holds `text`: the server writes a request's access line after its response has
        gone out, so a client that reads the log at once can be ahead of it."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} not in the server log after {timeout}s:\n{log}")
            time.sleep(0.05)
        return log

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fill_hub_cache(cache: Path, repo: str, files: dict[str, Path]) -> Path:
    """cache/models--org--repo/{refs/main, blobs/, snapshots/<commit>/<name> -> blob}."""
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / HUB_COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo_dir / "blobs").mkdir(exist_ok=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(HUB_COMMIT)
    for name, source in files.items():
        blob = repo_dir / "blobs" / f"blob-{name}"
        shutil.copyfile(source, blob)
        (snapshot / name).symlink_to(blob)
    return snapshot
