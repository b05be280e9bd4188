"""Fetch the http(s) records of a source concurrently, before decoding.

Each URL lands in `dest/<sha1 of URL>` (written under a temporary name, then renamed), so a rerun
after a crash only fetches what is missing. Limits: a total and a per-host concurrency, a timeout
per request, retries with backoff on timeouts, connection errors and 5xx, a size cap (checked on the
declared length and while streaming) and an image content type. Failures come back as reasons.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx
from tqdm import tqdm

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DownloadConfig:
    timeout_s: float = 20.0
    retries: int = 2
    max_bytes: int = 50 * 1024 * 1024
    concurrency: int = 32
    per_host: int = 4


class _Refused(Exception):
    """A response we will not retry: wrong type, too large, 4xx."""


def download_path(dest: Path, url: str) -> Path:
    return dest / hashlib.sha1(url.encode()).hexdigest()


def download_all(
    urls: list[str], dest: Path, config: DownloadConfig = DownloadConfig(), progress: bool = True
) -> dict[str, str]:
    """Fetch every URL not yet in `dest`; returns {url: reason} for the ones that failed."""
    dest.mkdir(parents=True, exist_ok=True)
    pending = [url for url in urls if not download_path(dest, url).exists()]
    if not pending:
        return {}
    return asyncio.run(_download(pending, dest, config, progress))


async def _download(urls: list[str], dest: Path, config: DownloadConfig, progress: bool) -> dict[str, str]:
    overall = asyncio.Semaphore(config.concurrency)
    per_host: dict[str, asyncio.Semaphore] = defaultdict(lambda: asyncio.Semaphore(config.per_host))
    failures: dict[str, str] = {}
    limits = httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency)
    async with httpx.AsyncClient(timeout=config.timeout_s, limits=limits, follow_redirects=True) as client:
        with tqdm(total=len(urls), unit="url", desc="downloading", disable=not progress) as bar:

            async def one(url: str) -> None:
                async with overall, per_host[urlparse(url).netloc]:
                    reason = await _fetch_with_retries(client, url, download_path(dest, url), config)
                if reason:
                    failures[url] = reason
                    log.warning("download failed %s: %s", url, reason)
                bar.update(1)
                bar.set_postfix(failed=len(failures))

            await asyncio.gather(*(one(url) for url in urls))
    return failures


async def _fetch_with_retries(client: httpx.AsyncClient, url: str, target: Path, config: DownloadConfig) -> str | None:
    reason = None
    for attempt in range(config.retries + 1):
        try:
            await _fetch(client, url, target, config)
            return None
        except _Refused as exc:
            return str(exc)
        except (httpx.TransportError, _Retryable) as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if attempt < config.retries:
            await asyncio.sleep(0.5 * 2**attempt)
    return f"gave up after {config.retries + 1} attempts: {reason}"


class _Retryable(Exception):
    """A 5xx or 429: the server may answer later."""


async def _fetch(client: httpx.AsyncClient, url: str, target: Path, config: DownloadConfig) -> None:
    async with client.stream("GET", url) as response:
        if response.status_code >= 500 or response.status_code == 429:
            raise _Retryable(f"HTTP {response.status_code}")
        if response.status_code != 200:
            raise _Refused(f"HTTP {response.status_code}")
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type and not content_type.startswith("image/") and content_type != "application/octet-stream":
            raise _Refused(f"not an image: content type {content_type}")
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > config.max_bytes:
            raise _Refused(f"{int(declared):,} bytes, over the limit of {config.max_bytes:,}")
        partial = target.with_suffix(".part")
        size = 0
        with open(partial, "wb") as handle:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > config.max_bytes:
                    handle.close()
                    partial.unlink(missing_ok=True)
                    raise _Refused(f"over the limit of {config.max_bytes:,} bytes")
                handle.write(chunk)
        partial.replace(target)
