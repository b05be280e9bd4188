"""The one path from request bytes to validated fields: JSON bodies and JSON inside multipart form fields.

`parse_json` bounds what a client can make the parser do: nesting deeper than MAX_JSON_DEPTH is refused
(Python's parser would otherwise recurse until RecursionError), and so are numbers that are not finite
(NaN, Infinity, or 1e400, which overflows to inf). `parse_fields` validates the parsed values with the
route's pydantic model. Every refusal is a typed error (Malformed: 400, InvalidInput: 422), never a 500.
FastAPI-typed bodies (`body: TextSearchRequest`) go through pydantic the same way.
"""

from __future__ import annotations

import json
import math
import time
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from xmodal.models.errors import InvalidInput, Malformed

MAX_JSON_DEPTH = 32  # our deepest legitimate body is a filter: {"filters": {"col": {"in": [...]}}}
Model = TypeVar("Model", bound=BaseModel)


def parse_json(text: bytes | str, what: str = "body") -> object:
    """The JSON value of `text`; Malformed when it is not JSON, too deeply nested or holds a non-finite number."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError as exc:
        raise Malformed(f"{what} is nested too deeply (at most {MAX_JSON_DEPTH} levels)") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Malformed(f"{what} is not valid JSON: {exc}") from exc
    except _NonFinite as exc:
        raise Malformed(f"{what} holds a number that is not finite ({exc}); numbers must fit a 64-bit float") from exc
    if _depth(value) > MAX_JSON_DEPTH:
        raise Malformed(f"{what} is nested too deeply (at most {MAX_JSON_DEPTH} levels)")
    return value


def parse_fields(model: type[Model], fields: object) -> Model:
    """Parsed fields (a JSON object, or multipart strings) as `model`, or InvalidInput naming each bad field."""
    if not isinstance(fields, dict):
        raise InvalidInput(f"the body must be a JSON object, not {type(fields).__name__}")
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        readable = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        raise InvalidInput(f"invalid field: {readable}") from exc


def json_list_fields(fields: dict, *names: str) -> dict:
    """A multipart form carries a list as one JSON array string: those of `names` parsed (through parse_json)."""
    parsed = dict(fields)
    for name in names:
        if isinstance(parsed.get(name), str):
            try:
                parsed[name] = parse_json(parsed[name], name)
            except Malformed as exc:
                raise InvalidInput(f'{name} must be a JSON array of strings, e.g. ["red", "blue"] ({exc})') from exc
    return parsed


def elapsed_ms(started: float) -> float:
    """Milliseconds since `started` (a time.perf_counter() reading), for a response's took_ms."""
    return round((time.perf_counter() - started) * 1000, 3)


class _NonFinite(Exception):
    pass


def _refuse_constant(name: str) -> float:
    raise _NonFinite(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFinite(text)
    return value


def _depth(value: object) -> int:
    """Nesting depth of a parsed value, without recursion (a scalar is 0, [] is 1)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, level + 1)
            if deepest > MAX_JSON_DEPTH:
                return deepest
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest
