import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from xmodal.app.batching import DynamicBatcher, Overloaded


def _run(coro):
    return asyncio.run(coro)


def test_concurrent_callers_share_batches_and_each_gets_its_own_answer():
    async def scenario():
        calls = []

        def square(items):
            calls.append(list(items))
            return [x * x for x in items]

        batcher = DynamicBatcher("t", square, ThreadPoolExecutor(1), max_batch_size=16, max_wait_ms=20)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(40)))
        await batcher.stop()
        return results, calls

    results, calls = _run(scenario())
    assert results == [i * i for i in range(40)]
    assert max(len(c) for c in calls) == 16 and sum(len(c) for c in calls) == 40
    assert len(calls) <= 4  # 40 items in batches of up to 16, not 40 calls


def test_a_full_queue_is_overload_not_waiting():
    async def scenario():
        release = threading.Event()

        def blocked(items):
            release.wait(5)
            return items

        batcher = DynamicBatcher("t", blocked, ThreadPoolExecutor(1), max_batch_size=1, max_wait_ms=0, max_queue=2)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit("running"))
        await asyncio.sleep(0.05)  # the worker took it and blocks in the model thread
        queued = [asyncio.ensure_future(batcher.submit(f"q{i}")) for i in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="queue is full"):
            await batcher.submit("one too many")
        release.set()
        done = await asyncio.gather(first, *queued)
        await batcher.stop()
        return done

    assert _run(scenario()) == ["running", "q0", "q1"]


def test_a_failing_batch_fails_its_callers_and_the_batcher_goes_on():
    async def scenario():
        def fragile(items):
            if "bad" in items:
                raise ValueError("model error")
            return [item.upper() for item in items]

        batcher = DynamicBatcher("t", fragile, ThreadPoolExecutor(1), max_batch_size=8, max_wait_ms=5)
        batcher.start()
        outcome = await asyncio.gather(batcher.submit("a"), batcher.submit("bad"), return_exceptions=True)
        after = await batcher.submit("b")
        await batcher.stop()
        return outcome, after

    outcome, after = _run(scenario())
    assert all(isinstance(o, ValueError) for o in outcome) and after == "B"


def test_a_lone_request_runs_at_once_and_requests_under_load_wait_to_share_a_batch():
    async def scenario():
        calls = []

        def record(items):
            calls.append(list(items))
            return items

        patient = DynamicBatcher("t", record, ThreadPoolExecutor(1), max_batch_size=16, max_wait_ms=60_000)
        patient.start()
        # Alone (no batch before it held company): it does not sit out the 60 s wait.
        alone = await asyncio.wait_for(patient.submit("alone"), timeout=5)
        await patient.stop()

        batcher = DynamicBatcher("t", record, ThreadPoolExecutor(1), max_batch_size=16, max_wait_ms=500)
        batcher.start()
        together = await asyncio.gather(*(batcher.submit(f"a{i}") for i in range(4)))  # queued at once
        # Now under load: arrivals 50 ms apart are gathered into one batch instead of running one by one.
        staggered = []
        for i in range(3):
            staggered.append(asyncio.ensure_future(batcher.submit(f"s{i}")))
            await asyncio.sleep(0.05)
        staggered = await asyncio.gather(*staggered)
        await batcher.stop()
        return alone, together, staggered, calls

    alone, together, staggered, calls = _run(scenario())
    assert (alone, together, staggered) == ("alone", ["a0", "a1", "a2", "a3"], ["s0", "s1", "s2"])
    assert calls == [["alone"], ["a0", "a1", "a2", "a3"], ["s0", "s1", "s2"]]
