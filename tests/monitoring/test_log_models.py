"""The prediction log of schema version 2: several models in one file, shadow scores, class-name labels.

One server logs every model's predictions in one SQLite file, keyed by (id, model): a challenger shadowing a
champion scores the champion's requests under the same ids (``served`` False). A label is a class name and
belongs to the request, so one feedback item labels every model's row under that id; each model reads it
against its own classes. A file of schema version 1 is moved aside at start-up, never rewritten.

Everything is real: SQLite files in ``tmp_path``, real ``PredictionLog``s, statuses and windows read back
from the file.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from service.monitoring.ids import new_ids
from service.monitoring.log import SCHEMA_VERSION, PredictionLog, PredictionRecord, records_for_batch
from tests.monitoring.test_log import MODEL, VERSION, K, make_batch, open_log, rows
from tests.monitoring.test_store_unavailable import captured

pytestmark = pytest.mark.unit

CHAMPION, CHALLENGER = "champion", "challenger"
NAMES = [f"class-{i}" for i in range(K)]  # class names that are not their own indices


def records(
    ids: Sequence[str], model: str, version: str, served: bool, probabilities: NDArray[np.float64]
) -> list[PredictionRecord]:
    probabilities = np.asarray(probabilities, dtype=np.float64)
    class_index = probabilities.argmax(axis=1).astype(np.intp)
    return records_for_batch(
        list(ids), model, version, served, class_index, probabilities.max(axis=1), probabilities, None
    )


def stored(record: PredictionRecord) -> NDArray[np.float64]:
    """A record's probabilities as the windows give them back: float32 storage, renormalised."""
    values = np.frombuffer(record.probabilities, dtype=np.float32).astype(np.float64)
    return np.asarray(values / values.sum(), dtype=np.float64)


def expected(batch: Sequence[PredictionRecord], k: int = K) -> NDArray[np.float64]:
    return np.stack([stored(r) for r in batch]) if batch else np.empty((0, k))


def label_one_by_one(log: PredictionLog, items: Sequence[tuple[str, str]]) -> list[str]:
    """Each item in its own request, each with a later feedback timestamp than the one before (the windows
    order labels newest first)."""
    statuses: list[str] = []
    for item in items:
        statuses += log.record_feedback([item])
        stamp = time.time()
        while time.time() <= stamp:
            time.sleep(0.001)
    return statuses


def marked(n: int, column: int) -> NDArray[np.float64]:
    """Rows whose ratio ``row[column] / row[-1]`` is ``2 + i``: row ``i`` is recognisable after storage."""
    probabilities = np.ones((n, K))
    probabilities[:, column] = 2.0 + np.arange(n)
    return np.asarray(probabilities / probabilities.sum(axis=1, keepdims=True), dtype=np.float64)


def request_index(window: NDArray[np.float64], column: int) -> list[int]:
    return [round(row[column] / row[-1]) - 2 for row in window]


# -- (a) two models under the same ids ----------------------------------------------------------------------


def test_a_served_row_and_a_shadow_row_under_one_id_both_land_and_stay_apart(store_target: Path | str) -> None:
    path = store_target
    version = "v-same"  # both models under one version string: only the model name keeps them apart
    answers = make_batch(6, seed=1, model=CHAMPION, version=version)
    ids = [r.id for r in answers]
    shadows = make_batch(6, seed=2, model=CHALLENGER, version=version, served=False, ids=ids)
    with open_log(path) as log:
        assert log.submit(shadows[::2] + answers + shadows[1::2]) == 12
        assert log.flush(5.0)
        assert log.count() == (12, 0)
        # a row resent under a key that is already there is ignored, not a second row
        log.submit(answers[:2])
        assert log.flush(5.0)
        assert log.count() == (12, 0)
        logged = rows(path, "SELECT id, model, served FROM predictions ORDER BY id, model")
        assert logged == [(i, model, served) for i in ids for model, served in ((CHALLENGER, 0), (CHAMPION, 1))]

        # each model's unlabelled window: its own rows only, newest first
        np.testing.assert_allclose(log.recent_predictions(CHAMPION, version, K, None, None), expected(answers[::-1]))
        np.testing.assert_allclose(log.recent_predictions(CHALLENGER, version, K, None, None), expected(shadows[::-1]))
        assert log.recent_predictions("nobody", version, K, None, None).shape == (0, K)

        # one label per request: recorded once, and it labels both models' rows under that id
        labelled = [(ids[4], NAMES[7]), (ids[1], NAMES[0]), (ids[2], NAMES[3])]
        assert label_one_by_one(log, labelled) == ["recorded"] * 3
        assert log.count() == (12, 3)
        assert log.record_feedback([(ids[1], NAMES[0]), (ids[4], NAMES[8])]) == ["duplicate", "conflict"]
        for model, batch in ((CHAMPION, answers), (CHALLENGER, shadows)):
            probs, labels = log.labelled_window(model, version, NAMES, None, None)
            assert labels.tolist() == [3, 0, 7]  # newest label first
            np.testing.assert_allclose(probs, expected([batch[2], batch[1], batch[4]]))
            assert log.labelled_window(model, version, NAMES, 2, None)[1].tolist() == [3, 0]
        assert log.labelled_window("nobody", version, NAMES, None, None)[1].shape == (0,)


def test_a_label_that_comes_before_both_rows_counts_for_both_once_they_land(store_target: Path | str) -> None:
    path = store_target
    answers = make_batch(2, seed=3, model=CHAMPION, version="v-c")
    ids = [r.id for r in answers]
    shadows = make_batch(2, seed=4, model=CHALLENGER, version="v-s", served=False, ids=ids)
    with open_log(path) as log:
        assert log.record_feedback([(ids[0], NAMES[5])]) == ["pending"]
        assert log.labelled_window(CHAMPION, "v-c", NAMES, None, None)[1].tolist() == []
        log.submit(answers)
        assert log.flush(5.0)
        assert log.labelled_window(CHAMPION, "v-c", NAMES, None, None)[1].tolist() == [5]
        assert log.labelled_window(CHALLENGER, "v-s", NAMES, None, None)[1].tolist() == []
        log.submit(shadows)
        assert log.flush(5.0)
        probs, labels = log.labelled_window(CHALLENGER, "v-s", NAMES, None, None)
        assert labels.tolist() == [5]
        np.testing.assert_allclose(probs, expected(shadows[:1]))
        # the shadow row landing did not add to the champion's window
        assert log.labelled_window(CHAMPION, "v-c", NAMES, None, None)[1].tolist() == [5]
        assert log.count() == (4, 1)


# -- (b) paired_window --------------------------------------------------------------------------------------


def test_paired_window_aligns_the_two_models_rows_request_by_request(store_target: Path | str) -> None:
    path = store_target
    n = 8
    ids = new_ids(n)
    champion_probs, challenger_probs = marked(n, 0), marked(n, 1)  # row i: request i, under either model
    answers = records(ids, CHAMPION, "v1", True, champion_probs)
    shadows = records(ids, CHALLENGER, "v2", False, challenger_probs)
    order = np.random.default_rng(0).permutation(n)  # the shadow rows land out of order
    # Rows that must stay out of the pairing:
    lone = records(new_ids(2), CHAMPION, "v1", True, marked(2, 2))  # answered, never shadowed
    old_ids = new_ids(2)  # the champion's answers shadowed by another version of the challenger
    old_pair = records(old_ids, CHAMPION, "v1", True, marked(2, 2)) + records(
        old_ids, CHALLENGER, "v-old", False, marked(2, 2)
    )
    prior_ids = new_ids(2)  # another version of the champion, shadowed by this challenger
    prior_pair = records(prior_ids, CHAMPION, "v0", True, marked(2, 2)) + records(
        prior_ids, CHALLENGER, "v2", False, marked(2, 2)
    )
    swapped_ids = new_ids(2)  # the roles reversed: the challenger answered, the champion shadowed
    swapped = records(swapped_ids, CHALLENGER, "v2", True, marked(2, 2)) + records(
        swapped_ids, CHAMPION, "v1", False, marked(2, 2)
    )
    with open_log(path) as log:
        log.submit(answers + [shadows[i] for i in order] + lone + old_pair + prior_pair + swapped)
        assert log.flush(5.0)
        assert log.count() == (2 * n + 2 + 4 + 4 + 4, 0)

        window = log.paired_window((CHAMPION, "v1"), (CHALLENGER, "v2"), NAMES, None)
        newest_first = list(range(n))[::-1]
        assert request_index(window.champion, 0) == newest_first
        assert request_index(window.challenger, 1) == newest_first
        np.testing.assert_allclose(window.champion, expected(answers[::-1]))
        np.testing.assert_allclose(window.challenger, expected(shadows[::-1]))
        assert window.labelled_champion.shape == window.labelled_challenger.shape == (0, K)
        assert window.labels.shape == (0,) and window.labels.dtype == np.int64

        limited = log.paired_window((CHAMPION, "v1"), (CHALLENGER, "v2"), NAMES, 3)
        assert request_index(limited.champion, 0) == request_index(limited.challenger, 1) == newest_first[:3]

        # labels, newest first; one on an excluded request and one that is not a class stay out
        items = [
            (ids[2], NAMES[6]),
            (old_ids[0], NAMES[1]),
            (ids[5], NAMES[9]),
            (ids[0], "not-a-class"),
            (prior_ids[0], NAMES[2]),
            (swapped_ids[0], NAMES[2]),
            (ids[7], NAMES[0]),
        ]
        assert label_one_by_one(log, items) == ["recorded"] * len(items)
        window = log.paired_window((CHAMPION, "v1"), (CHALLENGER, "v2"), NAMES, None)
        assert request_index(window.labelled_champion, 0) == [7, 5, 2]
        assert request_index(window.labelled_challenger, 1) == [7, 5, 2]
        np.testing.assert_allclose(window.labelled_champion, expected([answers[7], answers[5], answers[2]]))
        np.testing.assert_allclose(window.labelled_challenger, expected([shadows[7], shadows[5], shadows[2]]))
        assert window.labels.tolist() == [0, 9, 6]
        # labelling changes nothing about the unlabelled pairing
        assert request_index(window.champion, 0) == request_index(window.challenger, 1) == newest_first

        # the versions are part of the key: another pair of versions sees only its own requests
        old = log.paired_window((CHAMPION, "v1"), (CHALLENGER, "v-old"), NAMES, None)
        assert old.champion.shape == (2, K) and old.labels.tolist() == [1]
        prior = log.paired_window((CHAMPION, "v0"), (CHALLENGER, "v2"), NAMES, None)
        assert prior.champion.shape == (2, K) and prior.labels.tolist() == [2]
        reversed_roles = log.paired_window((CHALLENGER, "v2"), (CHAMPION, "v1"), NAMES, None)
        assert reversed_roles.champion.shape == (2, K) and reversed_roles.labels.tolist() == [2]
        nothing = log.paired_window((CHAMPION, "v9"), (CHALLENGER, "v2"), NAMES, None)
        assert nothing.champion.shape == nothing.challenger.shape == (0, K) and nothing.labels.shape == (0,)


# -- (c) a label outside a model's classes ------------------------------------------------------------------


def test_a_label_outside_a_models_classes_is_left_out_of_its_window_and_counts_for_a_model_that_has_it(
    store_target: Path | str,
) -> None:
    path = store_target
    narrow, wide = ["cat", "dog"], ["cat", "dog", "bird"]  # the challenger knows one class more
    ids = new_ids(3)
    rng = np.random.default_rng(5)
    answers = records(ids, CHAMPION, "v1", True, rng.dirichlet(np.ones(2), size=3))
    shadows = records(ids, CHALLENGER, "v2", False, rng.dirichlet(np.ones(3), size=3))
    with open_log(path) as log:
        log.submit(answers + shadows)
        assert log.flush(5.0)
        statuses = label_one_by_one(log, [(ids[0], "bird"), (ids[1], "dog"), (ids[2], "cat")])
        assert statuses == ["recorded"] * 3  # stored for the request, whichever model can read it

        probs, labels = log.labelled_window(CHAMPION, "v1", narrow, None, None)
        assert labels.tolist() == [0, 1]  # "bird" is not the champion's to judge
        np.testing.assert_allclose(probs, expected([answers[2], answers[1]], 2))

        probs, labels = log.labelled_window(CHALLENGER, "v2", wide, None, None)
        assert labels.tolist() == [0, 1, 2]
        np.testing.assert_allclose(probs, expected([shadows[2], shadows[1], shadows[0]], 3))
    assert sorted(rows(path, "SELECT prediction_id, label FROM feedback")) == sorted(
        zip(ids, ["bird", "dog", "cat"], strict=True)
    )


def test_labels_a_model_cannot_read_never_crowd_its_own_out_of_a_limited_window(store_target: Path | str) -> None:
    path = store_target
    ids = new_ids(3)
    rng = np.random.default_rng(6)
    answers = records(ids, CHALLENGER, "v2", True, rng.dirichlet(np.ones(3), size=3))
    with open_log(path) as log:
        log.submit(answers)
        assert log.flush(5.0)
        label_one_by_one(log, [(ids[0], "dog"), (ids[1], "bird"), (ids[2], "bird")])  # the newest: "bird"
        for limit in (1, 2):
            _, labels = log.labelled_window(CHALLENGER, "v2", ["cat", "dog", "fish"], limit, None)
            assert labels.tolist() == [1]  # the limit counts this model's readable labels, not every label
        pairs = log.paired_window((CHALLENGER, "v2"), (CHAMPION, "v1"), ["cat", "dog", "fish"], 1)
        assert len(pairs.labels) == 0  # no shadow rows: nothing paired


# -- (d) a log of schema version 1 --------------------------------------------------------------------------

V1_SCHEMA = """
CREATE TABLE predictions (
    id TEXT PRIMARY KEY, ts REAL NOT NULL, model_version TEXT NOT NULL, class_index INTEGER NOT NULL,
    confidence REAL NOT NULL, probabilities BLOB NOT NULL, features BLOB
);
CREATE TABLE feedback (prediction_id TEXT PRIMARY KEY, label INTEGER NOT NULL, ts REAL NOT NULL);
"""


def write_v1_log(path: Path) -> tuple[tuple[object, ...], tuple[object, ...]]:
    """A log as calibserve wrote it before version 2 (WAL, user_version 0), with one prediction and its label."""
    prediction = (new_ids(1)[0], time.time() - 60, "v-old", 3, 0.75, np.full(K, 0.1, np.float32).tobytes(), None)
    label = (prediction[0], 3, time.time() - 30)
    with closing(sqlite3.connect(path)) as connection:
        assert connection.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
        connection.executescript(V1_SCHEMA)
        connection.execute("INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?)", prediction)
        connection.execute("INSERT INTO feedback VALUES (?, ?, ?)", label)
        connection.commit()
        assert connection.execute("PRAGMA user_version").fetchone() == (0,)
    return prediction, label


def test_a_version_1_log_is_moved_aside_intact_and_a_fresh_log_started(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    prediction, label = write_v1_log(path)
    before = path.read_bytes()
    with captured() as messages, open_log(path) as log:
        (moved,) = tmp_path.glob("log.sqlite.v1-*")
        assert log.count() == (0, 0)  # a fresh log, not the old one's rows
        fresh = make_batch(3, seed=6)
        log.submit(fresh)
        assert log.flush(5.0)
        assert log.record_feedback([(fresh[0].id, "4")]) == ["recorded"]
        assert log.count() == (3, 1)
        # the old log's prediction is not in this log: a label for its (recent) id waits as pending
        assert log.record_feedback([(str(prediction[0]), "3")]) == ["pending"]  # a recent id, not logged here
    assert not list(tmp_path.glob("log.sqlite.corrupt-*"))
    # the old file as it was, byte for byte, its row and label readable there
    assert moved.read_bytes() == before
    assert rows(moved, "SELECT * FROM predictions") == [prediction]
    assert rows(moved, "SELECT * FROM feedback") == [label]
    assert rows(moved, "PRAGMA user_version") == [(0,)]
    # the new file is version 2 and holds only the new rows
    assert rows(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert {r[0] for r in rows(path, "SELECT id FROM predictions")} == {r.id for r in fresh}
    warnings = messages.messages(logging.WARNING)
    assert len(warnings) == 1 and str(moved) in warnings[0] and str(path) in warnings[0], warnings
    assert messages.messages(logging.ERROR) == []


def test_a_version_2_log_is_reopened_in_place(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    first = make_batch(2, seed=7)
    with open_log(path) as log:
        log.submit(first)
        assert log.flush(5.0)
        assert log.record_feedback([(first[0].id, "1")]) == ["recorded"]
    with captured() as messages, open_log(path) as log:
        assert log.count() == (2, 1)
    assert sorted(tmp_path.iterdir()) == [path]  # nothing moved aside (and the WAL checkpointed away)
    assert messages.messages(logging.WARNING) == messages.messages(logging.ERROR) == []


def test_an_empty_database_is_given_the_schema_not_moved(tmp_path: Path) -> None:
    """user_version 0 alone is not version 1: a database without a predictions table is simply started."""
    path = tmp_path / "log.sqlite"
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("CREATE TABLE unrelated (x INTEGER)")
        connection.commit()
    with open_log(path) as log:
        log.submit(make_batch(1, seed=8))
        assert log.flush(5.0)
        assert log.count() == (1, 0)
    assert not list(tmp_path.glob("log.sqlite.*-*"))
    assert rows(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


# -- (e) labels are text ------------------------------------------------------------------------------------


@pytest.mark.parametrize("label", ["007", "7.0", "1e3", "-0", " 7", "0x10", "7"])
def test_a_numeric_looking_label_is_stored_and_compared_as_the_text_it_is(store_target: Path | str, label: str) -> None:
    path = store_target
    type_of = "pg_typeof(label)::text" if isinstance(path, str) else "typeof(label)"
    classes = [label, "7" if label != "7" else "007"] + [f"c{i}" for i in range(2, K)]
    batch = make_batch(2, seed=9)
    with open_log(path) as log:
        log.submit(batch)
        assert log.flush(5.0)
        assert log.record_feedback([(batch[0].id, label)]) == ["recorded"]
        assert rows(path, f"SELECT label, {type_of} FROM feedback") == [(label, "text")]
        assert log.record_feedback([(batch[0].id, label)]) == ["duplicate"]
        assert log.record_feedback([(batch[0].id, classes[1])]) == ["conflict"]  # "7" is not "007"
        assert log.labelled_window(MODEL, VERSION, classes, None, None)[1].tolist() == [0]
        # a model without that exact name among its classes does not read it as its lookalike
        assert log.labelled_window(MODEL, VERSION, classes[1:], None, None)[1].tolist() == []
