"""Property-based: schemathesis generates requests from the live server's /openapi.json; none may get a 5xx."""

from __future__ import annotations

import collections

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

pytestmark = pytest.mark.e2e  # ~10 s once the session server is up
EXAMPLES = 15  # per operation: a bounded smoke run, not a fuzzing campaign


def test_no_operation_answers_a_server_error(server):
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    examples, failures = collections.Counter(), []
    for result in schema.get_all_operations():
        operation = result.ok()
        label = operation.label

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def check(case):  # run at once, inside this iteration
            response = case.call(base_url=server.url, timeout=60)
            examples[label] += 1
            try:
                case.validate_response(response, checks=[not_a_server_error])
            except Exception as exc:  # noqa: BLE001 - collect them all, report once
                failures.append(f"{label}: {response.status_code} {response.text[:200]} ({type(exc).__name__})")

        check()
    print(f"schemathesis: {len(examples)} operations, {sum(examples.values())} examples, {len(failures)} failures")
    assert len(examples) >= 15 and not failures, "\n".join(failures)
