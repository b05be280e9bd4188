"""SIGTERM drains: the server stops accepting connections, lets the request in flight finish, and exits 0."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest

from xmodal.app.testing import Server

pytestmark = pytest.mark.e2e
DRAINING = "Waiting for connections to close"  # uvicorn's log line once it stopped listening and waits


def test_sigterm_lets_the_request_in_flight_finish_and_exits_0(coco_index_dir, tmp_path):
    headers_sent, release, answer = threading.Event(), threading.Event(), {}

    def body():  # a request the server has started on, whose body ends only when the test says so
        yield b'{"text": "a living room'
        headers_sent.set()
        release.wait(60)
        yield b' with a television", "k": 3}'

    def send():
        try:
            answer["response"] = httpx.post(
                server.url + "/v1/search/text", content=body(), timeout=60, headers={"content-type": "application/json"}
            )
        except httpx.HTTPError as exc:
            answer["error"] = exc

    with Server(coco_index_dir, tmp_path / "log") as server:
        server.wait_ready()
        sender = threading.Thread(target=send)
        sender.start()
        assert headers_sent.wait(30)
        assert httpx.get(server.url + "/healthz").status_code == 200  # the server has read the request by now
        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        while DRAINING not in server.log():
            assert time.monotonic() < deadline and server.process.poll() is None, server.log()
            time.sleep(0.1)
        with pytest.raises(httpx.ConnectError):  # no new connections while draining
            httpx.get(server.url + "/healthz")
        release.set()
        sender.join(60)
        code = server.process.wait(timeout=60)
        assert "error" not in answer, (answer, server.log())
        assert answer["response"].status_code == 200, answer["response"].text
        assert len(answer["response"].json()["results"]) == 3
        assert code == 0, server.log()
        assert "Application shutdown complete" in server.log()
