"""A batch's columns as Python values: what a JSON renderer reads, made with one ``tolist()`` per column.

Kept in inference, next to ``BatchPrediction``, because it is a pure function of the batch's arrays; both the
composition layer (``service.prediction``, which makes them on the inference thread for small micro-batches)
and the renderers (``service.api``) import it from here, so the import direction stays api -> prediction ->
inference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.inference.engine import BatchPrediction


@dataclass(frozen=True, slots=True)
class RowValues:
    """Rows as Python values. ``tolist()`` costs about the same for 1 row as for 50, so a micro-batch's are
    converted once (``of_each``) and each request gets its slice, rather than converting per request."""

    class_index: list[int]
    confidence: list[float]
    probabilities: list[list[float]]
    prediction_set: list[list[int]]  # class indices in each row's set, ascending
    band_index: list[int]
    expected_accuracy: list[list[float]]  # per row: value, low, high (NaN where the band had no test samples)
    entropy: list[float]
    margin: list[float]
    abstain: list[bool]

    @classmethod
    def of(cls, batch: BatchPrediction) -> RowValues:
        """The batch's rows as Python values."""
        return cls._converted(lambda name: getattr(batch, name))

    @classmethod
    def of_each(cls, batches: Sequence[BatchPrediction]) -> list[RowValues]:
        """Each batch's values, converted together (one ``tolist()`` per column for all of them) and then
        sliced: the same values as ``of`` on each batch alone."""
        if len(batches) == 1:
            return [cls.of(batches[0])]
        whole = cls._converted(lambda name: np.concatenate([getattr(batch, name) for batch in batches]))
        ends = np.cumsum([len(batch) for batch in batches]).tolist()
        return [whole.rows(end - len(batch), end) for batch, end in zip(batches, ends, strict=True)]

    @classmethod
    def _converted(cls, column: Callable[[str], NDArray[Any]]) -> RowValues:
        return cls(
            column("class_index").tolist(),
            column("confidence").tolist(),
            column("probabilities").tolist(),
            prediction_sets(column("prediction_set")),
            column("band_index").tolist(),
            column("expected_accuracy").tolist(),
            column("entropy").tolist(),
            column("margin").tolist(),
            column("abstain").tolist(),
        )

    def rows(self, start: int, stop: int) -> RowValues:
        """Rows ``start:stop``."""
        return RowValues(*(getattr(self, name)[start:stop] for name in self.__slots__))


def prediction_sets(members: NDArray[np.bool_]) -> list[list[int]]:
    """Each row's class indices in its prediction set, ascending, from the ``[N, K]`` membership mask."""
    rows, classes = np.nonzero(members)
    ends = np.cumsum(np.bincount(rows, minlength=len(members))).tolist()
    flat = classes.tolist()
    return [flat[end - size : end] for end, size in zip(ends, np.diff(ends, prepend=0).tolist(), strict=True)]
