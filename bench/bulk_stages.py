"""Where a 1000-row request's time goes, stage by stage, in-process (what bounds the bulk throughput).

    .venv/bin/python bench/bulk_stages.py

Times each stage of the /v1/predict path on the first 1000 digits rows (median of repeats, one thread, no
HTTP): the JSON parse, stacking the rows, the engine (onnxruntime plus the trust metadata), the prediction
log's share on the request path (ids, rows, queueing), the log writer's SQLite inserts, and the two answers
(JSON per-instance dicts plus encoding, or the .npz). Then the ceilings these imply for instances/s on one
core. Figures only; compare them with bench/RESULTS.md's bulk rows from the same machine.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sklearn.datasets import load_digits

from service.api.parsing import parse_json
from service.api.render import encode_json, model_summary, render_npz, render_predictions
from service.inference.features import rows_to_matrix
from service.inference.rows import RowValues
from service.monitoring.ids import new_ids
from service.monitoring.log import PredictionLog, records_for_batch
from service.repository import load_engine
from service.settings import Settings

ROWS = 1000
REPEATS = 15


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    result = function()
    samples = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        result = function()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples), result


def main() -> int:
    engine = load_engine(Settings())
    data = load_digits().data[:ROWS]
    body = json.dumps({"instances": data.astype(int).tolist()}).encode()
    io = engine.card.io
    stages: list[tuple[str, float]] = []
    seconds, (_, rows) = timed(lambda: parse_json(body))
    stages.append(("JSON parse (msgspec)", seconds))
    seconds, features = timed(lambda: rows_to_matrix(rows, io.n_features, io.feature_names))
    stages.append(("rows -> float32 matrix (numpy)", seconds))
    seconds, batch = timed(lambda: engine.predict(features, 0.9))
    stages.append(("engine: onnxruntime + trust metadata", seconds))
    session_only, _ = timed(lambda: engine.run(features))
    seconds, ids = timed(lambda: new_ids(ROWS))
    record = seconds

    def records(batch_ids: list[str]) -> list[Any]:
        return records_for_batch(
            batch_ids, engine.card.name, engine.card.version, True, batch.class_index, batch.confidence,
            batch.probabilities, None,
        )  # fmt: skip

    seconds, _ = timed(lambda: records(ids))
    record += seconds
    stages.append(("log, request path: ids + rows", record))
    with tempfile.TemporaryDirectory() as tmp:
        log = PredictionLog(Path(tmp) / "log.sqlite", queue_size=ROWS * REPEATS, linger=0.0)
        prepared = [records(new_ids(ROWS)) for _ in range(REPEATS)]
        started = time.perf_counter()
        for prepared_rows in prepared:
            log.submit(prepared_rows)
        log.flush(60)
        writer = (time.perf_counter() - started) / REPEATS  # commits of 500 rows, WAL, synchronous=NORMAL
        log.close()
    stages.append(("log writer: SQLite inserts (own thread)", writer))
    seconds, _ = timed(lambda: RowValues.of(batch))
    stages.append(("Python values of the batch (tolist)", seconds))
    summary = model_summary(engine, 0.9)
    seconds, predictions = timed(lambda: render_predictions(engine, batch, ids, None, False))
    stages.append(("JSON answer: per-instance dicts", seconds))
    seconds, _ = timed(lambda: encode_json({"predictions": predictions, "model": summary}))
    stages.append(("JSON answer: encoding (msgspec)", seconds))
    seconds, _ = timed(lambda: render_npz(engine, batch, ids, False, summary))
    stages.append((".npz answer (numpy.savez)", seconds))

    print(f"{'stage, ' + str(ROWS) + ' rows':<45} {'ms':>8}")
    for name, value in stages:
        print(f"{name:<45} {value * 1e3:8.2f}")
    print(f"{'  of which the onnxruntime session alone':<45} {session_only * 1e3:8.2f}")
    by_name = dict(stages)
    json_path = sum(
        by_name[name]
        for name in (
            "JSON parse (msgspec)",
            "rows -> float32 matrix (numpy)",
            "engine: onnxruntime + trust metadata",
            "log, request path: ids + rows",
            "Python values of the batch (tolist)",
            "JSON answer: per-instance dicts",
            "JSON answer: encoding (msgspec)",
        )
    )
    npy_path = by_name["engine: onnxruntime + trust metadata"] + by_name["log, request path: ids + rows"]
    npy_path += by_name[".npz answer (numpy.savez)"]
    print()
    print(f"JSON in, JSON out, request path:   {json_path * 1e3:6.2f} ms -> at most {ROWS / json_path:9,.0f} rows/s")
    print(f".npy in, .npz out, request path:   {npy_path * 1e3:6.2f} ms -> at most {ROWS / npy_path:9,.0f} rows/s")
    print(f"log writer alone:                  {writer * 1e3:6.2f} ms -> at most {ROWS / writer:9,.0f} rows/s")
    print(
        f"onnxruntime alone:                 {session_only * 1e3:6.2f} ms -> at most {ROWS / session_only:9,.0f} rows/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
