"""Metadata filters: which item ids satisfy conditions on the items table's columns.

    {"width": {"gte": 640}, "license": {"in": ["cc0", "cc-by"]}, "camera": "X100"}

A plain value means equality; an object takes `in`, `gt`, `gte`, `lt`, `lte` (all given must hold).
Conditions on different columns all must hold. Columns are the item fields (path, width, height,
sha256) and the source's own metadata columns.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from xmodal.models.errors import InvalidInput

FILTERABLE_FIXED = ("path", "width", "height", "sha256")
_NOT_FILTERABLE = {"id", "location", "captions", "duplicates", "generated_caption"}
_RANGES = {"gt": pc.greater, "gte": pc.greater_equal, "lt": pc.less, "lte": pc.less_equal}


class FilterError(InvalidInput):
    """A filter names an unknown column or an unknown operator, or a value of the wrong type."""


def filterable_columns(items: pa.Table) -> list[str]:
    return [name for name in items.column_names if name not in _NOT_FILTERABLE]


def matching_ids(items: pa.Table, filters: dict) -> np.ndarray:
    """Sorted int64 ids of the items that satisfy every condition."""
    mask = None
    for column, condition in filters.items():
        if column not in items.column_names or column in _NOT_FILTERABLE:
            raise FilterError(
                f"cannot filter on {column!r}; filterable columns: {', '.join(filterable_columns(items))}"
            )
        values = items.column(column)
        try:
            clause = _clause(values, condition, column)
        # Arrow refuses a value of another type (ArrowException, TypeError, ValueError) or out of the column's
        # range (OverflowError: {"width": 10**30} on an int64 column).
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            if isinstance(exc, FilterError):
                raise
            raise FilterError(f"filter on {column!r} does not fit the column's type {values.type}: {exc}") from exc
        mask = clause if mask is None else pc.and_(mask, clause)
    if mask is None:
        return np.arange(items.num_rows, dtype=np.int64)
    return np.flatnonzero(mask.to_numpy(zero_copy_only=False).astype(bool, copy=False) & ~_nulls(mask)).astype(np.int64)


def _clause(values, condition, column: str):
    if not isinstance(condition, dict):
        return pc.equal(values, pa.scalar(condition, values.type) if condition is not None else None)
    unknown = set(condition) - {"in", *_RANGES}
    if unknown or not condition:
        raise FilterError(
            f"filter on {column!r}: use a value, or an object with in, gt, gte, lt, lte (got {sorted(unknown)})"
        )
    clauses = []
    if "in" in condition:
        if not isinstance(condition["in"], list):
            raise FilterError(f"filter on {column!r}: 'in' takes a list")
        clauses.append(pc.is_in(values, value_set=pa.array(condition["in"], values.type)))
    for op, function in _RANGES.items():
        if op in condition:
            clauses.append(function(values, pa.scalar(condition[op], values.type)))
    result = clauses[0]
    for clause in clauses[1:]:
        result = pc.and_(result, clause)
    return result


def _nulls(mask) -> np.ndarray:
    return mask.is_null().to_numpy(zero_copy_only=False).astype(bool)
