"""Two `xmodal serve` replicas over one shared index folder: each picks up a newly published version on its
own, and neither fails a request while it does (docs/serving.md, "Replicas")."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from PIL import Image

from xmodal.app.testing import Server
from xmodal.indexer.build import BuildConfig, build_index
from xmodal.models.encoders import Encoder

pytestmark = pytest.mark.e2e

REPLICA_ENV = {"XMODAL_RELOAD_INTERVAL_S": "0.2", "XMODAL_RATE_LIMIT_RPS": "0"}  # loaders loop past 50/s
FIRST = frozenset({"0.png", "1.png", "2.png", "3.png"})


def _paths(response: httpx.Response) -> frozenset[str]:
    return frozenset(hit["path"] for hit in response.json()["results"])


def test_replicas_each_swap_to_a_published_version_without_failing_a_request(tiny_coca_dir, tmp_path):
    photos, shared = tmp_path / "photos", tmp_path / "index"  # `shared`: the one folder every replica serves
    photos.mkdir()
    for i, name in enumerate(sorted(FIRST)):
        Image.new("RGB", (32, 32), (60 * i, 10, 200)).save(photos / name)
    encoder = Encoder.from_spec(f"local-dir:{tiny_coca_dir}", "cpu")
    first = build_index(BuildConfig(photos, shared, workers=0, progress=False), encoder).version.name

    answers: list[list[tuple[int, str | None, frozenset[str]]]] = [[], []]  # per replica: status, version, paths
    failures: list[str] = []
    stop = threading.Event()

    def load(n: int) -> None:
        with httpx.Client(base_url=replicas[n].url, timeout=30) as client:
            while not stop.is_set():
                try:
                    response = client.post("/v1/search/text", json={"text": "a blue square", "k": 50})
                except httpx.TransportError as exc:
                    failures.append(f"replica {n}: {exc!r}")
                    continue
                version = response.headers.get("x-xmodal-index-version")
                answers[n].append(
                    (response.status_code, version, _paths(response) if response.is_success else frozenset())
                )
                time.sleep(0.02)  # ~10 requests per poll interval; flat out, they starve the publisher of CPU

    replicas = [Server(shared, tmp_path / f"replica-{n}.log", env=REPLICA_ENV) for n in range(2)]
    loaders = [threading.Thread(target=load, args=(n,)) for n in range(2)]
    try:
        for replica in replicas:
            replica.wait_ready()
        for loader in loaders:
            loader.start()
        time.sleep(0.5)  # both answer from the first version, under load, before the publish

        # The publish `xmodal index --update` makes, from this process (apart from both servers, as a job is).
        Image.new("RGB", (32, 32), (10, 250, 30)).save(photos / "added.png")
        second = build_index(BuildConfig(photos, shared, workers=0, progress=False, update=True), encoder).version.name
        assert second != first

        deadline = time.monotonic() + 10  # 50 polls at 0.2 s: generous on a loaded machine
        for replica in replicas:
            while (served := httpx.get(replica.url + "/v1/index").json()["version"]) != second:
                assert time.monotonic() < deadline, f"still on {served}:\n{replica.log()}"
                time.sleep(0.1)
        time.sleep(0.5)  # both answer from the new version, under load, after the swap
    finally:
        stop.set()
        for loader in loaders:
            if loader.is_alive():
                loader.join()
        logs = [replica.log() for replica in replicas]
        for replica in replicas:
            replica.stop()

    assert not failures, failures[:5]
    expected = {first: FIRST, second: FIRST | {"added.png"}}
    for n, log in enumerate(logs):
        statuses = {status for status, _, _ in answers[n]}
        assert statuses == {200}, f"replica {n}: {len(answers[n])} requests, statuses {statuses}\n{log}"
        # Every answer comes whole from the version its header names (the added item is found in the second)...
        assert all(expected.get(version) == paths for _, version, paths in answers[n]), f"replica {n}: a mixed answer"
        # ...and each replica answers from the first version, swaps once, then only from the second: never back.
        versions = [version for _, version, _ in answers[n]]
        swap = versions.index(second) if second in versions else len(versions)
        assert 0 < swap < len(versions), f"replica {n}: did not answer from both {first} and {second}"
        assert versions == [first] * swap + [second] * (len(versions) - swap), f"replica {n} went back"
        assert f"hot swap {first} -> {second}" in log
