"""Property-based: no client input reaches a 5xx. Every body field of every route in the app's own OpenAPI
schema (so a new route is covered without editing this file), as JSON and as multipart form fields, gets
arbitrary JSON values, thousands-deep nesting, numbers beyond any int or float type, non-finite numbers and
odd types, while the other required fields stay valid."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.app.routes.conftest import PNG, PNG_B64

EXAMPLES = 12  # per operation and content type: a bounded smoke run, not a fuzzing campaign
PLACEHOLDER = "__xmodal_any_input__"
WHOLE_BODY = ""  # the field name that stands for the body itself

_HUGE = st.integers(min_value=-(10**40), max_value=10**40) | st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**30])
_SCALARS = st.none() | st.booleans() | _HUGE | st.floats() | st.text(max_size=8)
_KEYS = st.sampled_from(["width", "height", "path", "license", "sha256", "id", "in", "gte", "lt", "eq"]) | st.text(
    max_size=5
)
JSON_VALUES = st.recursive(
    _SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3), max_leaves=8
)
RAW_TOKENS = st.sampled_from(["1e400", "-1e400", "1e-400", "NaN", "Infinity", "-Infinity", "1" + "0" * 40, "-0"])


@st.composite
def deep(draw) -> str:
    depth = draw(st.sampled_from([200, 1_000, 5_000, 50_000]))
    if draw(st.booleans()):
        return "[" * depth + "]" * depth
    return '{"width": {"in": ' + "[" * depth + "1" + "]" * depth + "}}"


_COLUMNS = st.sampled_from(["width", "height", "path", "license", "sha256"])
_CONDITION = _SCALARS | st.dictionaries(
    st.sampled_from(["in", "gt", "gte", "lt", "lte"]), _SCALARS | st.lists(_SCALARS, max_size=3), max_size=2
)
FILTER_LIKE = st.dictionaries(_COLUMNS, _CONDITION, min_size=1, max_size=2)  # {"width": {"gte": 10**30}}, ...

# Raw JSON text for one value: json.dumps writes non-finite floats as NaN/Infinity, which Python's parser takes.
RAW_VALUES = (JSON_VALUES | FILTER_LIKE).map(json.dumps) | RAW_TOKENS | deep()


def _resolve(schema: dict, components: dict) -> dict:
    while "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _operations(openapi: dict) -> list[tuple[str, str, dict]]:
    """(path, content type, object schema) for every request body the app declares."""
    components = openapi.get("components", {}).get("schemas", {})
    found = []
    for path, methods in openapi["paths"].items():
        for method, operation in methods.items():
            assert method in {"get", "post", "delete", "put", "patch"}
            for content_type, media in operation.get("requestBody", {}).get("content", {}).items():
                schema = _resolve(media["schema"], components)
                for alternative in schema.get("oneOf", [schema]):
                    found.append((path, content_type, _resolve(alternative, components)))
    return found


def _base_value(name: str, schema: dict, dim: int) -> object:
    """A valid value for a required field."""
    if name == "image_b64":
        return PNG_B64
    schema = next((s for s in schema.get("anyOf", [schema]) if s.get("type") != "null"), schema)
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "array":
        item = schema.get("items", {}).get("type")
        return {"integer": [0, 1], "number": [0.1] * dim}.get(item, ["a red square", "a blue square"])
    return {"integer": 1, "number": 0.5, "boolean": True, "object": {}}.get(kind, "a red square")


@pytest.fixture(scope="module")
def operations(client) -> list[tuple[str, str, dict]]:
    return _operations(client.get("/openapi.json").json())


@pytest.fixture(scope="module")
def dim(client) -> int:
    return client.get("/v1/indexes").json()["indexes"][0]["embed_dim"]


def test_the_schema_declares_every_body(operations):
    paths = {path for path, _, _ in operations}
    assert {"/v1/search/text", "/v1/search/image", "/v1/search/vector", "/v1/rank", "/v1/caption", "/v1/vqa"} <= paths
    assert {"/v1/embed/text", "/v1/embed/image"} <= paths


def test_no_body_field_gets_a_server_error(client, operations, dim):
    failures: list[str] = []
    for path, content_type, schema in operations:
        properties = {name: prop for name, prop in schema.get("properties", {}).items() if name != "file"}
        required = [name for name in schema.get("required", []) if name != "file"]
        base = {name: _base_value(name, properties.get(name, {}), dim) for name in required}
        fields = sorted(properties) + ([WHOLE_BODY] if content_type == "application/json" else [])
        # Fields with a few allowed values (mode, target) take any of them, so that a value only one mode reads
        # (a sampling seed) is thrown at that mode too.
        choices = {name: st.sampled_from(prop["enum"]) for name, prop in properties.items() if "enum" in prop}

        @settings(
            max_examples=EXAMPLES * max(1, len(fields)) // 2,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(field=st.sampled_from(fields), raw=RAW_VALUES, chosen=st.fixed_dictionaries({}, optional=choices))
        def check(field: str, raw: str, chosen: dict) -> None:
            response = _send(client, path, content_type, {**base, **chosen}, field, raw)
            if response.status_code >= 500:
                failures.append(
                    f"{path} {content_type} {field}={raw[:60]!r}: {response.status_code} {response.text[:200]}"
                )

        check()
    assert not failures, f"{len(failures)} server errors:\n" + "\n".join(sorted(set(failures))[:40])


def _send(client, path: str, content_type: str, base: dict, field: str, raw: str):
    if content_type == "application/json":
        if field == WHOLE_BODY:
            text = raw
        else:
            text = json.dumps({**base, field: PLACEHOLDER}).replace(json.dumps(PLACEHOLDER), raw)
        return client.post(path, content=text.encode(), headers={"content-type": "application/json"})
    form = {name: value if isinstance(value, str) else json.dumps(value) for name, value in base.items()}
    form[field] = raw
    return client.post(path, data=form, files={"file": ("image.png", PNG, "image/png")})
