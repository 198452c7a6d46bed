"""Turn validated JSON rows into the float32 matrix the graph takes, refusing anything we would have to guess.

Rows arrive either as lists in the card's feature order or as objects keyed by feature name. Every
problem names the instance (and feature) at fault, because the caller has to find it in their payload.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from service.errors import InvalidInput

Row = Sequence[float] | Mapping[str, float]
_SHOWN = 5
FLOAT32_MAX = float(np.finfo(np.float32).max)


def rows_to_matrix(rows: Sequence[Row], n_features: int, feature_names: Sequence[str] | None) -> NDArray[np.float32]:
    """Stack ``rows`` into float32 [N, F]; lengths, names and float32 range are checked per row."""
    if not rows:
        raise InvalidInput("instances is empty: send at least one row", {"field": "instances"})
    if all(isinstance(row, list) and len(row) == n_features for row in rows):
        # Fast path: the schema already guaranteed finite numbers; numpy stacks them in one call.
        return as_float32(np.asarray(rows, dtype=np.float64), feature_names)
    index = {name: i for i, name in enumerate(feature_names)} if feature_names is not None else None
    matrix = np.empty((len(rows), n_features), dtype=np.float64)
    for i, row in enumerate(rows):
        if isinstance(row, Mapping):
            matrix[i] = _named_row(i, row, index, n_features)
        else:
            if len(row) != n_features:
                raise _width_error(i, len(row), n_features)
            matrix[i] = row
    return as_float32(matrix, feature_names)


def check_row_widths(rows: Sequence[object], n_features: int) -> None:
    """Refuse the first row (list or object) with more than ``n_features`` values, as ``rows_to_matrix``
    would: O(rows), so a parser can run it before validating any element (a row of two million strings
    is refused for its width, not after two million type errors)."""
    for i, row in enumerate(rows):
        if isinstance(row, list | dict) and len(row) > n_features:
            raise _width_error(i, len(row), n_features)


def _width_error(i: int, width: int, n_features: int) -> InvalidInput:
    return InvalidInput(
        f"instances[{i}] has {width} features; the model expects {n_features}",
        {"field": f"instances[{i}]", "expected": n_features, "got": width},
    )


def _named_row(i: int, row: Mapping[str, float], index: dict[str, int] | None, n_features: int) -> NDArray[np.float64]:
    if index is None:
        raise InvalidInput(
            f"instances[{i}] is an object, but this model's card has no feature names; send a list of "
            f"{n_features} numbers",
            {"field": f"instances[{i}]"},
        )
    unknown = [name for name in row if name not in index]
    if unknown:
        raise InvalidInput(
            f"instances[{i}] has unknown feature name(s): {', '.join(map(repr, unknown[:_SHOWN]))}",
            {"field": f"instances[{i}]", "unknown": unknown[:50]},
        )
    if len(row) != len(index):
        missing = [name for name in index if name not in row]
        raise InvalidInput(
            f"instances[{i}] lacks {len(missing)} feature(s): {', '.join(map(repr, missing[:_SHOWN]))}"
            + (", …" if len(missing) > _SHOWN else ""),
            {"field": f"instances[{i}]", "missing": missing[:50]},
        )
    values = np.empty(len(index), dtype=np.float64)
    for name, value in row.items():
        values[index[name]] = value
    return values


def as_float32(
    matrix: NDArray[np.float64], feature_names: Sequence[str] | None, field: str = "instances"
) -> NDArray[np.float32]:
    """float64 values beyond float32's range would silently become inf inside the graph: refuse them.

    The bound is checked in float64, before the cast, so it is exactly the ``maximum`` the OpenAPI
    document publishes (a value a hair above it would otherwise round down to FLT_MAX and pass).
    """
    outside = ~(np.abs(matrix) <= FLOAT32_MAX)
    if outside.any():
        row, column = (int(v) for v in np.argwhere(outside)[0])
        name = f" ({feature_names[column]!r})" if feature_names is not None else ""
        raise InvalidInput(
            f"{field}[{row}][{column}]{name} = {float(matrix[row, column])!r} is not a finite float32 "
            f"(|x| must be at most {FLOAT32_MAX:.7g})",
            {"field": f"{field}[{row}][{column}]", "feature": feature_names[column] if feature_names else None},
        )
    return matrix.astype(np.float32)
