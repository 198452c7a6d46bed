"""The flat float32 ``[N, F]`` helpers of before ``InputSignature``, kept for the benchmarks and tests that
call them: each is now a float32 ``[N, F]`` signature's own check (``service.inference.inputs``), so there
is one decoder, whatever the caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from service.inference.inputs import FLOAT32_MAX, InputSignature, check_instance_widths

Row = Sequence[float] | Mapping[str, float]

__all__ = ["FLOAT32_MAX", "Row", "as_float32", "check_row_widths", "rows_to_matrix"]


def rows_to_matrix(rows: Sequence[Row], n_features: int, feature_names: Sequence[str] | None) -> NDArray[np.float32]:
    """Stack ``rows`` into float32 [N, F]; lengths, names and float32 range are checked per row."""
    matrix: NDArray[np.float32] = InputSignature.flat(n_features, feature_names).from_json(rows)
    return matrix


def check_row_widths(rows: Sequence[object], n_features: int) -> None:
    """Refuse the first row (list or object) with more than ``n_features`` values, before any is validated."""
    check_instance_widths(rows, InputSignature.flat(n_features))


def as_float32(
    matrix: NDArray[np.float64], feature_names: Sequence[str] | None, field: str = "instances"
) -> NDArray[np.float32]:
    """float64 values beyond float32's range (or not finite) refused, naming the cell; the rest rounded."""
    converted: NDArray[np.float32] = InputSignature.flat(matrix.shape[1], feature_names).convert(matrix, field)
    return converted
