"""The history's per-bucket figures equal the calibration functions applied to the same rows, on both stores.

Rows are written through a real ``PredictionLog`` (SQLite file or PostgreSQL), with ids and times spread over
three buckets; the store aggregates in SQL, ``monitoring/history.py`` turns the counts into figures, and each
is compared with the functions the live window uses, on exactly that bucket's rows.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from service.calibration.metrics import ece_from_confidences
from service.card import CalibrationCard
from service.monitoring.drift import histogram, population_stability_index, total_variation
from service.monitoring.history import buckets_from_counts, history_query
from service.monitoring.log import PredictionLog, records_for_batch
from tests.conftest import DEFAULT_MODEL_DIR
from tests.monitoring.test_pending import uuid7_at

pytestmark = pytest.mark.unit

CARD = CalibrationCard.from_json((DEFAULT_MODEL_DIR / "card.json").read_bytes())
BUCKET_S = 600.0


def rows_at(rng: np.random.Generator, n: int, start: float, span: float) -> tuple[list[str], np.ndarray, np.ndarray]:
    times = np.sort(start + rng.uniform(0, span, size=n))
    ids = [uuid7_at(t) for t in times]
    probs = rng.dirichlet(np.full(CARD.n_classes, 0.3), size=n)
    return ids, times, probs


def test_bucket_figures_equal_the_calibration_functions_on_the_buckets_rows(store_target: Path | str) -> None:
    rng = np.random.default_rng(7)
    since = time.time() - 3 * BUCKET_S - 60
    sizes = (400, 150, 30)  # labels in the last bucket are too few for accuracy and ECE
    log = PredictionLog(store_target, prune_interval=3600, retention_days=None, retention_rows=None)
    expected = []
    try:
        for b, n in enumerate(sizes):
            ids, times, probs = rows_at(rng, n, since + b * BUCKET_S + 1, BUCKET_S - 2)
            predicted = probs.argmax(axis=1)
            confidence = probs.max(axis=1)
            records = records_for_batch(ids, "digits", CARD.version, True, predicted, confidence, probs, None)
            records = [r._replace(ts=float(t)) for r, t in zip(records, times, strict=True)]
            # noise that must not count: a shadow score of the same ids, another model, another version
            shadows = records_for_batch(ids, "digits", CARD.version, False, predicted, confidence, probs, None)
            other = records_for_batch(
                [uuid7_at(t) for t in times], "other", CARD.version, True, predicted, confidence, probs, None
            )
            older = records_for_batch(
                [uuid7_at(t) for t in times], "digits", "v-old", True, predicted, confidence, probs, None
            )
            log.submit(records + [r._replace(ts=float(t)) for r, t in zip(shadows, times, strict=True)])
            log.submit([r._replace(ts=float(t)) for r, t in zip(other + older, np.tile(times, 2), strict=True)])
            assert log.flush(10.0)
            labelled = rng.random(n) < 0.7
            labels = np.array([rng.choice(CARD.n_classes, p=p) for p in probs])
            items = [(i, CARD.classes[y]) for i, y, keep in zip(ids, labels, labelled, strict=True) if keep]
            assert set(log.record_feedback(items)) == {"recorded"}
            expected.append((confidence, predicted, confidence[labelled], (predicted == labels)[labelled]))
        query = history_query(CARD, "digits", CARD.version, since, since + 3 * BUCKET_S, BUCKET_S)
        buckets = buckets_from_counts(CARD, query, log.history_counts(query), min_labels=50, min_predictions=100)
    finally:
        log.close()

    assert len(buckets) == 3
    reference = np.asarray(CARD.reference.confidence_histogram)
    training = np.asarray(CARD.dataset.class_counts)
    for bucket, (confidence, predicted, labelled_confidence, correct), n in zip(buckets, expected, sizes, strict=True):
        assert bucket.predictions == n
        assert bucket.labelled == len(correct)
        assert bucket.mean_confidence == pytest.approx(confidence.mean(), rel=1e-12)
        if bucket.labelled >= 50:
            assert bucket.accuracy == pytest.approx(correct.mean(), rel=1e-12)
            assert bucket.ece == pytest.approx(ece_from_confidences(labelled_confidence, correct), abs=1e-12)
        else:
            assert bucket.accuracy is None and bucket.ece is None
            assert any("labelled" in reason for reason in bucket.insufficient)
        if n >= 100:
            live = histogram(confidence, reference.size)
            assert bucket.confidence_psi == pytest.approx(population_stability_index(reference, live), rel=1e-12)
            counts = np.bincount(predicted, minlength=CARD.n_classes)
            assert bucket.class_shift == pytest.approx(total_variation(training, counts), rel=1e-12)
        else:
            assert bucket.confidence_psi is None and bucket.class_shift is None


def test_every_version_together_and_empty_buckets_say_so(store_target: Path | str) -> None:
    rng = np.random.default_rng(3)
    since = time.time() - 4 * BUCKET_S - 60
    log = PredictionLog(store_target, prune_interval=3600, retention_days=None, retention_rows=None)
    try:
        ids, times, probs = rows_at(rng, 120, since + 1, BUCKET_S - 2)
        for version, part in (("v-a", slice(0, 60)), ("v-b", slice(60, 120))):
            records = records_for_batch(
                ids[part], "digits", version, True, probs[part].argmax(1), probs[part].max(1), probs[part], None
            )
            log.submit([r._replace(ts=float(t)) for r, t in zip(records, times[part], strict=True)])
        assert log.flush(10.0)
        query = history_query(CARD, "digits", None, since, since + 4 * BUCKET_S, BUCKET_S)
        buckets = buckets_from_counts(CARD, query, log.history_counts(query), min_labels=50, min_predictions=100)
    finally:
        log.close()
    assert [b.predictions for b in buckets] == [120, 0, 0, 0]
    assert buckets[0].confidence_psi is not None  # both versions together: 120 >= 100
    assert buckets[1].mean_confidence is None and len(buckets[1].insufficient) == 2
    assert buckets[-1].end == pytest.approx(since + 4 * BUCKET_S)
