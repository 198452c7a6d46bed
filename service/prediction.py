"""The one path from a request's input to calibrated, logged predictions.

Every protocol (``/v1`` JSON and binary, and ``/v2``) calls ``Predictor.predict`` with the model's input as
its codec decoded it (``[N, *instance]`` of the declared dtype: ``InputSignature``); micro-batching,
the engine's per-request error isolation and the prediction log sit behind it, so no route has a
second copy of that logic. The batch function runs on the inference thread: logging rows there too
means a full log queue ("wait" policy) slows inference down instead of blocking the event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.errors import InvalidInput, Overloaded
from service.inference.batching import MicroBatcher
from service.inference.engine import BatchPrediction, InferenceEngine
from service.inference.rows import RowValues
from service.monitoring import prometheus as metrics
from service.monitoring.monitor import Monitor

Job = tuple[NDArray[Any], float]  # (input [N, *instance] of the declared dtype, conformal coverage)
# Batches of many small requests get their Python values made once, on the inference thread; a big
# request makes its own only if its answer is JSON (an .npz answer needs none).
EAGER_VALUES_ROWS = 256


@dataclass(frozen=True, slots=True)
class Scored:
    """One request's predictions, the ids they were logged under, and their Python values when its
    micro-batch was small enough to convert them on the inference thread (None: the renderer converts)."""

    prediction: BatchPrediction
    ids: list[str]
    values: RowValues | None


class Predictor:
    def __init__(
        self,
        engine: InferenceEngine,
        monitor: Monitor,
        *,
        max_batch_rows: int,
        max_batch_wait_s: float,
        max_queue_rows: int | None = None,
        queue_timeout_s: float | None = None,
        on_scored: Callable[[list[str], NDArray[Any]], None] | None = None,
    ) -> None:
        """``on_scored`` hears every logged batch's ids and input on the inference thread, after the answers
        are made (shadow scoring hands them to a challenger's queue there; it must not block)."""
        self.engine = engine
        self.monitor = monitor
        self.on_scored = on_scored
        self.batcher: MicroBatcher[Job, Scored] = MicroBatcher(
            self.score_batch,
            _rows,
            max_rows=max_batch_rows,
            max_wait_s=max_batch_wait_s,
            max_queue_rows=max_queue_rows,
            queue_timeout_s=queue_timeout_s,
        )

    async def predict(self, features: NDArray[Any], coverage: float) -> Scored:
        """Scored rows, or ``Overloaded`` (counted in /metrics by reason) when the queue sheds the request."""
        try:
            return await self.batcher.submit((features, coverage))
        except Overloaded as shed:
            metrics.SHED.labels(reason=str(shed.details.get("reason", "overloaded"))).inc()
            raise

    def score_batch(self, jobs: Sequence[Job]) -> list[Scored | InvalidInput]:
        """Predict every job with one onnxruntime call and log the successful rows in one submit."""
        outcomes = self.engine.predict_many(jobs)
        done = [(i, outcome) for i, outcome in enumerate(outcomes) if isinstance(outcome, BatchPrediction)]
        if not done:
            return [outcome for outcome in outcomes if isinstance(outcome, InvalidInput)]
        parts = [outcome for _, outcome in done]
        dtype = self.engine.signature.dtype  # what the graph was fed (a direct caller's float64 was converted)
        features = [np.asarray(jobs[i][0], dtype=dtype) for i, _ in done]
        if all(part.shape[1:] == features[0].shape[1:] for part in features):
            stacked = _joined(features)
            ids = self.monitor.record(
                _joined([part.class_index for part in parts]),
                _joined([part.confidence for part in parts]),
                _joined([part.probabilities for part in parts]),
                stacked,
            )
            shadowed = [(ids, stacked)]
        else:  # instances differing in a free dimension (sequence lengths) cannot be stacked: one record each
            ids, shadowed = [], []
            for part, inputs in zip(parts, features, strict=True):
                part_ids = self.monitor.record(part.class_index, part.confidence, part.probabilities, inputs)
                ids += part_ids
                shadowed.append((part_ids, inputs))
        # Small batches: the Python values, here on the inference thread, converted once for the whole batch.
        small = sum(len(part) for part in parts) <= EAGER_VALUES_ROWS
        values: list[RowValues | None] = list(RowValues.of_each(parts)) if small else [None] * len(parts)
        scored: dict[int, Scored] = {}
        start = 0
        for (i, outcome), part_values in zip(done, values, strict=True):
            scored[i] = Scored(outcome, ids[start : start + len(outcome)], part_values)
            start += len(outcome)
        if self.on_scored is not None:
            for batch_ids, inputs in shadowed:
                self.on_scored(batch_ids, inputs)
        return [scored[i] if isinstance(outcome, BatchPrediction) else outcome for i, outcome in enumerate(outcomes)]

    async def close(self) -> None:
        await self.batcher.close()


def _joined(arrays: list[NDArray[Any]]) -> NDArray[Any]:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def _rows(job: Job) -> int:
    return len(job[0])
