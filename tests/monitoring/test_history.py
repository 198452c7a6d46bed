"""The history's per-bucket figures equal the calibration functions applied to the same rows, on both stores.

Rows are written through a real ``PredictionLog`` (SQLite file or PostgreSQL), with ids and times spread over
buckets; the store aggregates in SQL (from its hourly rollup for whole-hour buckets, from the rows for finer
ones), ``monitoring/history.py`` turns the counts into figures, and each is compared with the functions the
live window uses (``evaluate_live``, the very checks of ``/health/calibration``) on exactly that bucket's rows.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from service.calibration.metrics import brier_per_sample, ece_from_confidences, nll_per_sample
from service.card import CalibrationCard
from service.monitoring.drift import histogram, population_stability_index, total_variation
from service.monitoring.history import HISTORY_BOOTSTRAP, LabelledCache, buckets_from_counts, history_query
from service.monitoring.live import LabelledWindow, LiveThresholds, UnlabelledWindow, evaluate_live
from service.monitoring.log import PredictionLog, records_for_batch
from service.monitoring.store.base import ROLLUP_SECONDS, PredictionRecord, Retention, stack_probabilities
from tests.conftest import DEFAULT_MODEL_DIR
from tests.monitoring.test_pending import uuid7_at

pytestmark = pytest.mark.unit

CARD = CalibrationCard.from_json((DEFAULT_MODEL_DIR / "card.json").read_bytes())
THRESHOLDS = LiveThresholds()
HOUR = float(ROLLUP_SECONDS)


def rows_at(rng: np.random.Generator, n: int, start: float, span: float) -> tuple[list[str], np.ndarray, np.ndarray]:
    times = np.sort(start + rng.uniform(0, span, size=n))
    ids = [uuid7_at(t) for t in times]
    probs = rng.dirichlet(np.full(CARD.n_classes, 0.3), size=n)
    return ids, times, probs


def at_times(records: list[PredictionRecord], times: np.ndarray) -> list[PredictionRecord]:
    return [r._replace(ts=float(t)) for r, t in zip(records, times, strict=True)]


def fill_buckets(log: PredictionLog, rng: np.random.Generator, since: float, bucket_s: float, sizes: tuple[int, ...]):
    """Served rows of digits/CARD.version in each bucket, 70% labelled (labels drawn from the probabilities,
    sharpened in the second bucket so it is miscalibrated), and rows that must not count beside them."""
    expected = []
    for b, n in enumerate(sizes):
        ids, times, probs = rows_at(rng, n, since + b * bucket_s + 1, bucket_s - 2)
        predicted, confidence = probs.argmax(axis=1), probs.max(axis=1)
        records = at_times(
            records_for_batch(ids, "digits", CARD.version, True, predicted, confidence, probs, None), times
        )
        shadows = records_for_batch(ids, "digits", CARD.version, False, predicted, confidence, probs, None)
        others = [uuid7_at(t) for t in times]
        other = records_for_batch(others, "other", CARD.version, True, predicted, confidence, probs, None)
        older = records_for_batch(
            [uuid7_at(t) for t in times], "digits", "v-old", True, predicted, confidence, probs, None
        )
        log.submit(records + at_times(shadows, times))
        log.submit(at_times(other, times) + at_times(older, times))
        assert log.flush(10.0)
        labelled = rng.random(n) < 0.7
        label_probs = probs if b != 1 else np.eye(CARD.n_classes)[rng.integers(CARD.n_classes, size=n)]
        labels = np.array([rng.choice(CARD.n_classes, p=p) for p in label_probs])
        items = [(i, CARD.classes[y]) for i, y, keep in zip(ids, labels, labelled, strict=True) if keep]
        assert set(log.record_feedback(items)) == {"recorded"}
        # what the store holds: float32 probabilities, renormalised, in prediction id order
        blobs = [r.probabilities for r in records]
        order = sorted(np.flatnonzero(labelled), key=lambda i: ids[i])
        stored = stack_probabilities([blobs[i] for i in order], CARD.n_classes)
        expected.append((confidence, predicted, stored, labels[order], stack_probabilities(blobs, CARD.n_classes)))
    return expected


def assert_bucket_equals_live(bucket, confidence, predicted, probs, labels, all_probs) -> None:
    assert bucket.predictions == confidence.size
    assert bucket.labelled == labels.size
    assert bucket.mean_confidence == pytest.approx(confidence.mean(), rel=1e-12)
    report = evaluate_live(
        CARD, LabelledWindow(probs, labels), UnlabelledWindow(all_probs), THRESHOLDS, n_boot=HISTORY_BOOTSTRAP
    )
    live = {reason.code: reason for reason in report.reasons}
    checks = {check.code: check for check in bucket.checks}
    if labels.size >= THRESHOLDS.min_labels:
        conf, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
        assert bucket.accuracy.value == pytest.approx(correct.mean(), rel=1e-12)
        assert bucket.ece.value == pytest.approx(ece_from_confidences(conf, correct), abs=1e-12)
        assert bucket.nll == pytest.approx(nll_per_sample(probs, labels, 1e-12).mean(), rel=1e-12)
        assert bucket.brier == pytest.approx(brier_per_sample(probs, labels).mean(), rel=1e-12)
        summary = report.labelled.calibration
        assert (bucket.ece.lower, bucket.ece.upper) == pytest.approx((summary.ece.lower, summary.ece.upper), abs=1e-12)
        assert (bucket.accuracy.lower, bucket.accuracy.upper) == pytest.approx(
            (summary.accuracy.lower, summary.accuracy.upper), abs=1e-12
        )
        assert bucket.ece_noise_floor == pytest.approx(summary.ece_noise_floor.upper, abs=1e-12)
        for code in ("live_ece", "live_accuracy_drop"):
            assert checks[code].status == live[code].status, (code, checks[code], live[code])
            assert checks[code].value == pytest.approx(live[code].value, abs=1e-12)
    else:
        assert bucket.accuracy is None and bucket.ece is None and bucket.nll is None
        assert any("labelled" in reason for reason in bucket.insufficient)
    if confidence.size >= THRESHOLDS.min_predictions:
        reference = np.asarray(CARD.reference.confidence_histogram)
        psi = population_stability_index(reference, histogram(confidence, reference.size))
        assert bucket.confidence_psi == pytest.approx(psi, rel=1e-9)
        counts = np.bincount(predicted, minlength=CARD.n_classes)
        assert bucket.class_shift == pytest.approx(total_variation(np.asarray(CARD.dataset.class_counts), counts))
        for code in ("confidence_psi", "estimated_accuracy_drop", "class_shift"):
            assert checks[code].status == live[code].status, (code, checks[code], live[code])
            assert checks[code].value == pytest.approx(live[code].value, abs=1e-6)  # live reads float32 rows
    else:
        assert bucket.confidence_psi is None and bucket.class_shift is None
    statuses = [reason.status for reason in report.reasons if reason.code in checks]
    assert bucket.status == (
        max(statuses, key=["ok", "warning", "critical"].index) if statuses else "insufficient_data"
    )


@pytest.mark.parametrize("bucket_s", [600.0, HOUR], ids=["rows", "rollup"])
def test_bucket_figures_equal_the_live_checks_on_the_buckets_rows(store_target: Path | str, bucket_s: float) -> None:
    rng = np.random.default_rng(7)
    since = (time.time() // HOUR) * HOUR - 3 * bucket_s
    sizes = (400, 150, 30)  # labels in the last bucket are too few for accuracy and ECE
    log = PredictionLog(store_target, prune_interval=3600, retention_days=None, retention_rows=None)
    try:
        expected = fill_buckets(log, rng, since, bucket_s, sizes)
        query = history_query(CARD, "digits", CARD.version, since, since + 3 * bucket_s, bucket_s)
        assert query.reads_rollup == (bucket_s == HOUR)
        buckets = buckets_from_counts(CARD, query, log.history_counts(query), THRESHOLDS)
    finally:
        log.close()
    assert len(buckets) == 3
    for bucket, rows in zip(buckets, expected, strict=True):
        assert_bucket_equals_live(bucket, *rows)
    assert buckets[1].status == "critical"  # labels that ignore the probabilities: miscalibrated, and said so
    assert {c.code: c.status for c in buckets[1].checks}["live_ece"] == "critical"
    assert buckets[0].versions == {CARD.version: 400}


def test_the_rollup_agrees_with_the_rows_after_retention_and_reopening(store_target: Path | str) -> None:
    """Whole-hour buckets read the rollup; the same buckets with a histogram the rollup cannot serve read the
    rows: both must count the same, also after the row limit pruned part of the oldest hour."""
    rng = np.random.default_rng(11)
    since = (time.time() // HOUR) * HOUR - 4 * HOUR
    log = PredictionLog(store_target, prune_interval=3600, retention_days=None, retention_rows=900)
    try:
        for b in range(4):
            ids, times, probs = rows_at(rng, 300, since + b * HOUR + 1, HOUR - 2)
            records = records_for_batch(ids, "digits", CARD.version, True, probs.argmax(1), probs.max(1), probs, None)
            log.submit(at_times(records, times))
            assert log.flush(10.0)
        log.prune_now()  # 1200 rows, 900 kept: the oldest hour goes, and none of the rest
        query = history_query(CARD, "digits", None, since, since + 4 * HOUR, HOUR)
        from_rollup = log.history_counts(query)
        from_rows = log.history_counts(dataclasses.replace(query, histogram_bins=7))
    finally:
        log.close()
    assert query.reads_rollup and not dataclasses.replace(query, histogram_bins=7).reads_rollup
    per_bucket = [[0] * 4, [0] * 4]
    for counted, counts in zip(per_bucket, (from_rollup, from_rows), strict=True):
        for b, _version, _class, n in counts.classes:
            counted[b] += n
    assert per_bucket[0] == per_bucket[1] == [0, 300, 300, 300]
    assert sorted(from_rollup.classes) == sorted(from_rows.classes)
    sums = [sum(c for b, _, _, c in counts.confidences if b == 2) for counts in (from_rollup, from_rows)]
    assert sums[0] == pytest.approx(sums[1], rel=1e-12)


def test_a_version_2_sqlite_log_gets_its_rollup_built_from_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    rng = np.random.default_rng(5)
    since = (time.time() // HOUR) * HOUR - 2 * HOUR
    log = PredictionLog(path, prune_interval=3600, retention_days=None, retention_rows=None)
    ids, times, probs = rows_at(rng, 250, since + 1, 2 * HOUR - 2)
    records = records_for_batch(ids, "digits", CARD.version, True, probs.argmax(1), probs.max(1), probs, None)
    log.submit(at_times(records, times))
    assert log.flush(10.0)
    log.close()
    with sqlite3.connect(path) as connection:  # as calibserve wrote it before the rollup
        connection.execute("DROP TABLE prediction_rollup")
        connection.execute("PRAGMA user_version = 2")
    log = PredictionLog(path, prune_interval=3600, retention_days=None, retention_rows=None)
    try:
        query = history_query(CARD, "digits", None, since, since + 2 * HOUR, HOUR)
        buckets = buckets_from_counts(CARD, query, log.history_counts(query), THRESHOLDS)
    finally:
        log.close()
    first = int(np.sum(times < since + HOUR))
    assert [b.predictions for b in buckets] == [first, 250 - first]
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone() == (3,)


def test_every_version_together_empty_buckets_and_the_cache(store_target: Path | str) -> None:
    rng = np.random.default_rng(3)
    since = time.time() - 4 * 600.0 - 60
    log = PredictionLog(store_target, prune_interval=3600, retention_days=None, retention_rows=None)
    try:
        ids, times, probs = rows_at(rng, 120, since + 1, 600.0 - 2)
        for version, part in (("v-a", slice(0, 60)), ("v-b", slice(60, 120))):
            records = records_for_batch(
                ids[part], "digits", version, True, probs[part].argmax(1), probs[part].max(1), probs[part], None
            )
            log.submit(at_times(records, times[part]))
        assert log.flush(10.0)
        labels = [rng.choice(CARD.n_classes, p=p) for p in probs]
        assert set(log.record_feedback([(i, CARD.classes[y]) for i, y in zip(ids, labels, strict=True)])) == {
            "recorded"
        }
        query = history_query(CARD, "digits", None, since, since + 4 * 600.0, 600.0)
        cache = LabelledCache()
        counts = log.history_counts(query)
        first = buckets_from_counts(CARD, query, counts, THRESHOLDS, cache)
        again = buckets_from_counts(CARD, query, counts, THRESHOLDS, cache)
    finally:
        log.close()
    assert [b.predictions for b in first] == [120, 0, 0, 0]
    assert first[0].versions == {"v-a": 60, "v-b": 60}
    assert first[0].confidence_psi is not None  # both versions together: 120 >= 100
    assert first[0].ece is not None and first == again
    assert first[1].mean_confidence is None and len(first[1].insufficient) == 2
    assert first[1].status == "insufficient_data"
    assert first[-1].end == pytest.approx(since + 4 * 600.0)


def test_a_range_of_too_many_buckets_is_refused() -> None:
    with pytest.raises(ValueError, match="buckets"):
        history_query(CARD, "digits", None, 0.0, 400 * 86400.0, 3600.0)
    assert Retention  # the retention type the rollup test relies on stays exported


@pytest.mark.parametrize("m", [50, 139, 500])
@pytest.mark.parametrize("sharpness", [1.0, 5.0, 40.0])
def test_the_ece_noise_bound_lies_above_the_simulated_floor(m: int, sharpness: float) -> None:
    """The bound lets a drifting bucket skip the simulation; it must never sit below what it bounds."""
    from service.calibration.uncertainty import ece_noise_floor
    from service.monitoring.history import ece_noise_bound

    rng = np.random.default_rng(m)
    confidences = 0.1 + 0.9 * rng.beta(sharpness, 1.0, size=m)
    floor = ece_noise_floor(confidences, n_sim=4000, level=THRESHOLDS.noise_level, seed=1)
    bound = ece_noise_bound(confidences, THRESHOLDS.gate_alpha)
    assert floor.upper < bound < floor.upper + 0.35


def test_a_new_version_is_marked_where_it_starts_serving(store_target: Path | str) -> None:
    from service.dashboard.page import _version_marks

    rng = np.random.default_rng(9)
    since = time.time() - 3 * 600.0 - 60
    log = PredictionLog(store_target, prune_interval=3600, retention_days=None, retention_rows=None)
    try:
        for b, version in enumerate(("v-old", "v-old", "v-new")):
            ids, times, probs = rows_at(rng, 20, since + b * 600.0 + 1, 598.0)
            records = records_for_batch(ids, "digits", version, True, probs.argmax(1), probs.max(1), probs, None)
            log.submit(at_times(records, times))
        assert log.flush(10.0)
        query = history_query(CARD, "digits", None, since, since + 3 * 600.0, 600.0)
        buckets = buckets_from_counts(CARD, query, log.history_counts(query), THRESHOLDS)
    finally:
        log.close()
    assert [b.versions for b in buckets] == [{"v-old": 20}, {"v-old": 20}, {"v-new": 20}]
    (mark,) = _version_marks(buckets)
    assert mark.x == buckets[2].start and mark.label == "version v-new"


def calibrated_bucket(rng: np.random.Generator, n: int, m: int) -> tuple[list, list]:
    """Predictions whose confidences are drawn from the card's test split and whose labels are right with
    exactly that probability: a calibrated model on unchanged traffic (the truth every check assumes)."""
    reference = np.asarray(CARD.reference.confidences)
    k = CARD.n_classes
    training = np.asarray(CARD.dataset.class_counts, dtype=float)
    confidence = rng.choice(reference, size=n)
    predicted = rng.choice(k, size=n, p=training / training.sum())
    probs = np.full((n, k), 0.0)
    probs[:] = ((1.0 - confidence) / (k - 1))[:, None]
    probs[np.arange(n), predicted] = confidence
    correct = rng.random(n) < confidence
    other = (predicted + rng.integers(1, k, size=n)) % k
    labels = np.where(correct, predicted, other)
    return probs, labels[:m]


def test_clean_buckets_raise_a_status_no_more_often_than_the_false_alarm_rate() -> None:
    """Each bucket is one evaluation of the live checks, so on calibrated, unshifted traffic at most about
    ``false_alarm_rate`` (1%) of buckets may show warning or critical. Measured here on 400 simulated buckets."""
    from service.monitoring.store.base import HistoryCounts

    rng = np.random.default_rng(2026)
    n_buckets, n, m = 400, 400, 120
    classes, confidences, labelled = [], [], []
    h = len(CARD.reference.confidence_histogram)
    for b in range(n_buckets):
        probs, labels = calibrated_bucket(rng, n, m)
        predicted, confidence = probs.argmax(1), probs.max(1)
        classes += [(b, "v", int(c), int(x)) for c, x in enumerate(np.bincount(predicted, minlength=CARD.n_classes))]
        bins = np.minimum((confidence * h).astype(int), h - 1)
        confidences += [(b, int(k), int(np.sum(bins == k)), float(confidence[bins == k].sum())) for k in range(h)]
        blobs = [row.astype(np.float32).tobytes() for row in probs[:m]]
        labelled += [(b, blob, CARD.classes[y]) for blob, y in zip(blobs, labels, strict=True)]
    query = history_query(CARD, "digits", None, 0.0, n_buckets * 600.0, 600.0)
    buckets = buckets_from_counts(CARD, query, HistoryCounts(classes, confidences, labelled), THRESHOLDS)
    alarms = sum(b.status in ("warning", "critical") for b in buckets)
    print(f"false alarms: {alarms} of {n_buckets} clean buckets ({alarms / n_buckets:.2%})")
    assert all(b.status != "insufficient_data" for b in buckets)
    assert alarms / n_buckets <= 0.025  # 1% expected; 2.5% leaves room for this sample of 400


def test_overconfident_buckets_are_flagged() -> None:
    """The other side of the false-alarm test: the same traffic, but right 15% less often than its
    confidence says (overconfident, ECE ~0.14), is flagged in nearly every bucket."""
    from service.monitoring.store.base import HistoryCounts

    rng = np.random.default_rng(7)
    labelled, classes, confidences = [], [], []
    h = len(CARD.reference.confidence_histogram)
    for b in range(50):
        probs, _ = calibrated_bucket(rng, 400, 120)
        predicted, confidence = probs.argmax(1), probs.max(1)
        correct = rng.random(400) < 0.85 * confidence
        labels = np.where(correct, predicted, (predicted + 1) % CARD.n_classes)[:120]
        classes += [(b, "v", int(c), int(x)) for c, x in enumerate(np.bincount(predicted, minlength=CARD.n_classes))]
        bins = np.minimum((confidence * h).astype(int), h - 1)
        confidences += [(b, int(k), int(np.sum(bins == k)), float(confidence[bins == k].sum())) for k in range(h)]
        labelled += [
            (b, p.astype(np.float32).tobytes(), CARD.classes[y]) for p, y in zip(probs[:120], labels, strict=True)
        ]
    query = history_query(CARD, "digits", None, 0.0, 50 * 600.0, 600.0)
    buckets = buckets_from_counts(CARD, query, HistoryCounts(classes, confidences, labelled), THRESHOLDS)
    flagged = [b for b in buckets if {c.code: c.status for c in b.checks}["live_ece"] != "ok"]
    assert len(flagged) >= 45


def test_a_batch_written_twice_is_counted_once_in_the_rollup(store_target: Path | str) -> None:
    """A retried batch (its acknowledgement lost) and a batch partly stored already add only their new rows."""
    from service.monitoring.store import open_store
    from tests.monitoring.test_log import rows as stored

    rng = np.random.default_rng(4)
    ids, times, probs = rows_at(rng, 50, time.time() - 100, 50)
    records = at_times(records_for_batch(ids, "digits", "v", True, probs.argmax(1), probs.max(1), probs, None), times)
    target = store_target
    store = open_store(target)
    try:
        store.write(records[:30])
        store.write(records[:30])  # all stored already
        store.write(records)  # 30 stored, 20 new
    finally:
        store.close()
    assert stored(target, "SELECT kind, SUM(n) FROM prediction_rollup GROUP BY kind ORDER BY kind") == [
        (0, 50),
        (1, 50),
    ]
