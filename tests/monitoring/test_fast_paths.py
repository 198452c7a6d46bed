"""The vectorised fast paths against the slow code they replace: histogram observation, id generation,
log records, the row queue, and the msgspec JSON parse against the strict pydantic parse."""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from typing import Any

import numpy as np
import pydantic
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from service.api.errors import invalid_request
from service.api.parsing import PredictOptions, parse_json
from service.api.schemas import DIGIT_ONE, DIGIT_ZERO, PredictRequest
from service.errors import InvalidInput, MalformedRequest, ServiceError
from service.inference.artifact import load_artifact
from service.inference.features import rows_to_matrix
from service.monitoring.ids import id_time, new_ids
from service.monitoring.log import PredictionRecord, RowQueue, records_for_batch
from service.monitoring.prometheus import CONFIDENCE, observe_many
from tests.conftest import DEFAULT_MODEL_DIR

pytestmark = pytest.mark.unit

# -- observe_many ----------------------------------------------------------------------------------------------

BUCKETS = tuple(float(edge) for edge in np.linspace(0, 1, 16)[1:])  # as CONFIDENCE's


def histogram_pair(buckets: tuple[float, ...]) -> tuple[tuple[CollectorRegistry, Histogram], ...]:
    """Two histograms of one name in two registries, so their expositions compare line for line."""
    pair = []
    for _ in range(2):
        registry = CollectorRegistry()
        pair.append((registry, Histogram("h", "test histogram", buckets=buckets, registry=registry)))
    return tuple(pair)


def samples(registry: CollectorRegistry) -> dict[str, float]:
    """Bucket, count and sum samples by name and labels (``_created`` is a timestamp, left out)."""
    found = {}
    for metric in registry.collect():
        for sample in metric.samples:
            if not sample.name.endswith("_created"):
                found[f"{sample.name}{sorted(sample.labels.items())}"] = sample.value
    return found


def exposition(registry: CollectorRegistry) -> list[str]:
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if line.startswith("h_") and not line.startswith("h_created")]


def edge_values(seed: int, buckets: tuple[float, ...]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = np.concatenate(
        [
            rng.random(1000),
            np.array(buckets),  # exactly on every bound: counted in that bucket (le)
            np.nextafter(np.array(buckets), 2.0),  # a hair above: the next one
            [0.0, 0.0, 1.0, 1.0, 1.5, 7.0, -0.25],  # zero, the last bound, beyond it, below the first
        ]
    )
    rng.shuffle(values)
    return values


@pytest.mark.parametrize("buckets", [BUCKETS, (0.1, 0.5, 1.0), (1.0,)], ids=["confidence", "three", "one"])
def test_observe_many_counts_exactly_like_observe_per_value(buckets: tuple[float, ...]) -> None:
    (loop_registry, by_value), (batch_registry, batched) = histogram_pair(buckets)
    values = edge_values(0, buckets)
    for value in values:
        by_value.observe(float(value))
    observe_many(batched, values)
    expected, got = samples(loop_registry), samples(batch_registry)
    assert expected.keys() == got.keys()
    sums = [name for name in expected if name.startswith("h_sum")]
    assert len(sums) == 1
    for name in expected:
        if name in sums:
            assert got[name] == pytest.approx(expected[name], rel=1e-12, abs=0.0)
        else:
            assert got[name] == expected[name], name  # buckets and count: exactly
    # and the count is the number of values, the +Inf bucket too
    assert got["h_count[]"] == len(values) == got["h_bucket[('le', '+Inf')]"]


def test_observe_many_adds_to_what_is_there_and_ignores_an_empty_batch() -> None:
    (loop_registry, by_value), (batch_registry, batched) = histogram_pair(BUCKETS)
    chunks = [np.array([0.5, 0.0625]), np.array([]), np.array([1.0, 0.25, 0.75, 0.99])]  # exact binary sums
    for chunk in chunks:
        for value in chunk:
            by_value.observe(float(value))
        observe_many(batched, chunk)
    assert exposition(batch_registry) == exposition(loop_registry)
    assert "h_count 6.0" in exposition(batch_registry)


def test_observe_many_on_the_service_histogram_moves_its_count() -> None:
    series = CONFIDENCE.labels(model="fast-paths-test")
    CONFIDENCE.labels(model="fast-paths-other")  # the histogram is per model: another model's series stays as it was

    def buckets(model: str) -> tuple[float, dict[float, float]]:
        found = [
            sample
            for metric in CONFIDENCE.collect()
            for sample in metric.samples
            if sample.labels.get("model") == model
        ]
        count = next(s.value for s in found if s.name.endswith("_count"))
        return count, {float(s.labels["le"]): s.value for s in found if s.name.endswith("_bucket")}

    count_before, before = buckets("fast-paths-test")
    other_before = buckets("fast-paths-other")
    observe_many(series, np.array([0.03, 0.5, 0.99]))
    count_after, after = buckets("fast-paths-test")
    assert buckets("fast-paths-other") == other_before
    assert count_after - count_before == 3
    bounds = sorted(after)
    assert bounds[0] == pytest.approx(1 / 15) and bounds[-1] == float("inf")
    added = [after[b] - before[b] for b in bounds]  # cumulative in the exposition
    assert added[0] == 1 and added[7] == 2 and added[-2] == added[-1] == 3


def test_observe_many_exposition_matches_observe_per_value() -> None:
    """Buckets and count exactly; the sum to rounding (added once per batch, not value by value)."""
    (loop_registry, by_value), (batch_registry, batched) = histogram_pair(BUCKETS)
    values = edge_values(0, BUCKETS)
    for value in values:
        by_value.observe(float(value))
    observe_many(batched, values)
    looped, batched_lines = exposition(loop_registry), exposition(batch_registry)
    assert [line for line in looped if "_sum" not in line] == [line for line in batched_lines if "_sum" not in line]
    sums = [float(line.rsplit(" ", 1)[1]) for text in (looped, batched_lines) for line in text if "_sum" in line]
    assert len(sums) == 2 and sums[0] == pytest.approx(sums[1], rel=1e-12)


# -- ids -----------------------------------------------------------------------------------------------------------


def fields(prediction_id: str) -> tuple[int, int]:
    """(unix milliseconds, 12-bit counter) of a UUIDv7."""
    value = uuid.UUID(prediction_id).int
    return value >> 80, (value >> 64) & 0xFFF


def assert_valid_increasing(ids: list[str]) -> None:
    assert len(set(ids)) == len(ids)
    assert all(a < b for a, b in itertools.pairwise(ids))  # as strings: SQLite's TEXT key order
    parsed = [uuid.UUID(i) for i in ids]
    assert all(a.int < b.int for a, b in itertools.pairwise(parsed))
    assert all(p.version == 7 and p.variant == uuid.RFC_4122 and str(p) == i for p, i in zip(parsed, ids, strict=True))
    stamps = [fields(i) for i in ids]
    assert all(a < b for a, b in itertools.pairwise(stamps))  # (ms, counter) strictly increases
    assert all(0 <= counter < 4096 for _, counter in stamps)


def test_ten_thousand_ids_in_one_call() -> None:
    ids = new_ids(10_000)  # more than 4096: the counter borrows the next milliseconds
    now = time.time()
    assert len(ids) == 10_000
    assert_valid_increasing(ids)
    assert all(abs(id_time(i) - now) < 1.0 for i in (ids[0], ids[4096], ids[-1]))
    # the next call, even within the same millisecond, goes on after the borrowed ones
    assert_valid_increasing(ids + new_ids(3) + new_ids(1))


def test_ids_across_many_calls() -> None:
    ids: list[str] = []
    for size in [1, 2, 3, 4096, 1, 5000, 7] + [1] * 2000 + [13] * 300:
        ids += new_ids(size)
    now = time.time()
    assert len(ids) == 1 + 2 + 3 + 4096 + 1 + 5000 + 7 + 2000 + 13 * 300
    assert_valid_increasing(ids)
    assert all(abs(id_time(i) - now) < 1.0 for i in ids[::997])
    assert new_ids(0) == []


def test_ids_from_threads_are_unique_and_ordered_per_thread() -> None:
    results: list[list[str]] = [[] for _ in range(6)]

    def make(slot: int) -> None:
        for size in (1, 700, 3, 5000, 2):
            results[slot] += new_ids(size)

    threads = [threading.Thread(target=make, args=(slot,)) for slot in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [i for chunk in results for i in chunk]
    assert len(set(every)) == len(every) == 6 * 5706
    for chunk in results:
        assert_valid_increasing(chunk)


# -- records_for_batch and RowQueue --------------------------------------------------------------------------------


def test_records_for_batch_round_trips_1000_rows() -> None:
    rng = np.random.default_rng(5)
    n, k = 1000, 10
    probabilities = rng.dirichlet(np.ones(k), size=n)
    class_index = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    features = rng.normal(size=(n, 64)).astype(np.float32)
    ids = new_ids(n)
    with_inputs = records_for_batch(ids, "m", "v1", True, class_index, confidence, probabilities, features)
    without = records_for_batch(ids, "m", "v1", True, class_index, confidence, probabilities, None)
    shadow = records_for_batch(ids, "c", "v2", False, class_index, confidence, probabilities, None)
    assert [r.id for r in shadow] == ids
    assert {(r.model, r.model_version, r.served) for r in shadow} == {("c", "v2", False)}
    for records in (with_inputs, without):
        assert [r.id for r in records] == ids
        assert all(type(r.class_index) is int and type(r.confidence) is float for r in records)
        assert [r.class_index for r in records] == class_index.tolist()
        assert [r.confidence for r in records] == confidence.tolist()
        assert {(r.model, r.model_version, r.served) for r in records} == {("m", "v1", True)}
        assert len({r.ts for r in records}) == 1
        assert abs(records[0].ts - time.time()) < 60
        joined = np.stack([np.frombuffer(r.probabilities, dtype=np.float32) for r in records])
        assert np.array_equal(joined, probabilities.astype(np.float32))
    assert all(r.features is None for r in without)
    logged = np.stack([np.frombuffer(r.features or b"", dtype=np.float32) for r in with_inputs])
    assert np.array_equal(logged, features)
    # float64 features (not yet cast) are stored as float32 as well
    again = records_for_batch(
        ids[:3], "m", "v1", True, class_index[:3], confidence[:3], probabilities[:3], features[:3] * 1.0
    )
    assert [r.features for r in again] == [r.features for r in with_inputs[:3]]


def queue_records(n: int) -> list[PredictionRecord]:
    probabilities = np.full((n, 2), 0.5)
    return records_for_batch(new_ids(n), "m", "v", True, np.zeros(n, np.intp), np.full(n, 0.5), probabilities, None)


def test_row_queue_takes_what_fits_and_hands_rows_out_in_order() -> None:
    queue = RowQueue(capacity=5, batch=3)
    records = queue_records(8)
    assert queue.put(records, timeout=0.0) == 5  # no room for the rest, no waiting
    assert len(queue) == 5
    first, done = queue.take(wait=0.0, linger=0.0)
    assert [r.id for r in first] == [r.id for r in records[:3]] and not done
    assert queue.put(records[5:], timeout=0.0) == 3
    second, _ = queue.take(wait=0.0, linger=0.0)
    third, _ = queue.take(wait=0.0, linger=0.0)
    assert [r.id for r in second + third] == [r.id for r in records[3:]]
    queue.close()
    rest, done = queue.take(wait=0.0, linger=0.0)
    assert rest == [] and done


def test_row_queue_put_waits_for_room_a_taker_makes() -> None:
    queue = RowQueue(capacity=4, batch=4)
    records = queue_records(50)
    taken: list[PredictionRecord] = []

    def writer() -> None:
        while True:
            rows, done = queue.take(wait=0.05, linger=0.0)
            taken.extend(rows)
            if done:
                return

    thread = threading.Thread(target=writer)
    thread.start()
    accepted = queue.put(records, timeout=30.0)
    queue.close()
    thread.join(30)
    assert not thread.is_alive()
    assert accepted == 50
    assert [r.id for r in taken] == [r.id for r in records]


# -- msgspec fast parse vs the strict pydantic parse -----------------------------------------------------------------

CARD = load_artifact(DEFAULT_MODEL_DIR).card
NAMES = list(CARD.io.feature_names or [])
ROW = json.dumps(DIGIT_ZERO)
FLOAT_ROW = json.dumps([v + 0.25 for v in DIGIT_ONE])
OBJECT_ROW = json.dumps(dict(zip(NAMES, DIGIT_ONE, strict=True)))
TAIL = ROW[ROW.index(",") :]


def with_first(value: str) -> bytes:
    return ('{"instances": [[' + value + TAIL + "]}").encode()


VALID = {
    "one list row": f'{{"instances": [{ROW}]}}',
    "float values": f'{{"instances": [{FLOAT_ROW}, {ROW}]}}',
    "object row": f'{{"instances": [{OBJECT_ROW}]}}',
    "mixed rows": f'{{"instances": [{ROW}, {OBJECT_ROW}, {FLOAT_ROW}]}}',
    "every option": f'{{"instances": [{ROW}], "coverage": 0.95, "top_k": 3, "include_logits": true, '
    '"model": "digits"}',
    "nulls for options": f'{{"instances": [{ROW}], "top_k": null, "model": null, "include_logits": false}}',
    "integral coverage": f'{{"instances": [{ROW}], "coverage": 1}}',
    "top_k as 3.0": f'{{"instances": [{ROW}], "top_k": 3.0}}',
    "exponents and signs": '{"instances": [[-0.0, 1E2, 2.5e-3, -7, 1e-300]]}',
    "whitespace around": f'\n  {{ "instances" : [ {ROW} ] }}  \n',
    "unicode escapes in names": '{"instances": [{"pixel\\u005f0_0": 1}]}',
    "key order": f'{{"top_k": 2, "instances": [{ROW}]}}',
}


def reference_parse(body: bytes) -> PredictRequest:
    """What the route did before the fast path: FastAPI's json.loads and the strict model."""
    return PredictRequest.model_validate(json.loads(body), from_attributes=True)


def reference_error(body: bytes) -> ServiceError:
    try:
        reference_parse(body)
    except pydantic.ValidationError as error:
        return invalid_request(error.errors(include_url=False))
    raise AssertionError(f"the reference parse accepted {body!r}")


@pytest.mark.parametrize("text", VALID.values(), ids=VALID.keys())
def test_valid_bodies_parse_to_what_the_strict_model_gives(text: str) -> None:
    body = text.encode()
    options, rows = parse_json(body)
    request = reference_parse(body)
    assert options == PredictOptions(request.coverage, request.top_k, request.include_logits, request.model)
    assert type(options.top_k) in (int, type(None)) and type(options.coverage) in (float, type(None))
    assert rows == list(request.instances)
    for got, expected in zip(rows, request.instances, strict=True):
        assert type(got) is type(expected)
        values = got.values() if isinstance(got, dict) else got
        assert all(type(v) is float for v in values)
    if all(len(r) == 64 for r in rows):  # full rows: the matrices the engine would get are the same too
        matrix = rows_to_matrix(rows, 64, NAMES)
        assert matrix.shape == (len(rows), 64)
        assert np.array_equal(matrix, rows_to_matrix(list(request.instances), 64, NAMES))


INVALID = {
    "bool in row": (with_first("true"), "instances[0][0]"),
    "string number": (with_first('"1.0"'), "instances[0][0]"),
    "null in row": (with_first("null"), "instances[0][0]"),
    "NaN literal": (with_first("NaN"), "instances[0][0]"),
    "Infinity literal": (with_first("-Infinity"), "instances[0][0]"),
    "1e400": (with_first("1e400"), "instances[0][0]"),
    "huge integer": (with_first("1" + "0" * 400), "instances[0][0]"),
    "nested list": (b'{"instances": [[[1]]]}', "instances[0][0]"),
    "instance is a number": (b'{"instances": [5]}', "instances[0]"),
    "bool in an object row": (b'{"instances": [{"pixel_0_0": false}]}', "instances[0].pixel_0_0"),
    "unknown key": (f'{{"instances": [{ROW}], "temperature": 2}}'.encode(), "temperature"),
    "top_k 0": (f'{{"instances": [{ROW}], "top_k": 0}}'.encode(), "top_k"),
    "top_k 2.5": (f'{{"instances": [{ROW}], "top_k": 2.5}}'.encode(), "top_k"),
    "top_k as string": (f'{{"instances": [{ROW}], "top_k": "3"}}'.encode(), "top_k"),
    "coverage as string": (f'{{"instances": [{ROW}], "coverage": "0.9"}}'.encode(), "coverage"),
    "coverage NaN": (f'{{"instances": [{ROW}], "coverage": NaN}}'.encode(), "coverage"),
    "include_logits 1": (f'{{"instances": [{ROW}], "include_logits": 1}}'.encode(), "include_logits"),
    "model a number": (f'{{"instances": [{ROW}], "model": 5}}'.encode(), "model"),
    "empty instances": (b'{"instances": []}', "instances"),
    "missing instances": (b'{"coverage": 0.9}', "instances"),
    "instances an object": (b'{"instances": {"a": 1}}', "instances"),
    "JSON array top level": (b"[[1, 2, 3]]", "body"),
    "JSON null": (b"null", "body"),
}


@pytest.mark.parametrize(("body", "field"), INVALID.values(), ids=INVALID.keys())
def test_invalid_bodies_are_refused_exactly_as_the_strict_model_refuses_them(body: bytes, field: str) -> None:
    expected = reference_error(body)
    with pytest.raises(ServiceError) as raised:
        parse_json(body)
    error = raised.value
    assert type(error) is type(expected) is InvalidInput
    assert error.message == expected.message
    assert error.details == expected.details
    assert error.message.startswith(f"{field}: "), error.message


MALFORMED = {
    "invalid JSON": (b'{"instances": [[1, 2', "request body is not valid JSON: "),
    "trailing garbage": (b'{"instances": [[1]]} x', "request body is not valid JSON: Extra data"),
    "empty body": (b"", "request body is required"),
    "only whitespace": (b"  \n ", "request body is required"),
    "invalid UTF-8": (b'{"instances": [[\xff\xfe]]}', "request body could not be decoded as JSON"),
    "nested too deeply": (b'{"instances": ' + b"[" * 20000 + b"]" * 20000 + b"}", "request body is not valid JSON"),
}


@pytest.mark.parametrize(("body", "says"), MALFORMED.values(), ids=MALFORMED.keys())
def test_bodies_that_are_not_json_are_malformed(body: bytes, says: str) -> None:
    with pytest.raises(MalformedRequest) as raised:
        parse_json(body)
    assert raised.value.message.startswith(says), raised.value.message
    assert raised.value.details == {"field": "body"}
    if body.strip():
        with pytest.raises((ValueError, RecursionError)):  # the reference could not decode it either
            json.loads(body)
    if body.startswith(b'{"instances": [[1'):  # not JSON: the message is json's own reason, as before
        with pytest.raises(json.JSONDecodeError) as reference:
            json.loads(body)
        assert raised.value.message == f"request body is not valid JSON: {reference.value.msg}"


@pytest.mark.parametrize(
    "body",
    [
        b"\xef\xbb\xbf" + f'{{"instances": [{ROW}]}}'.encode(),
        f'{{"instances": [{ROW}]}}'.encode("utf-16"),
    ],
    ids=["UTF-8 with BOM", "UTF-16"],
)
def test_bodies_the_old_parse_accepted_are_still_accepted(body: bytes) -> None:
    options, rows = parse_json(body)
    request = reference_parse(body)
    assert options == PredictOptions(request.coverage, request.top_k, request.include_logits, request.model)
    assert rows == list(request.instances)


def test_the_fast_parse_accepts_nothing_the_strict_model_refuses() -> None:
    """Bodies msgspec accepts must not be ones the strict model refuses (the route would skip validation)."""
    suspicious: list[Any] = [
        {"instances": [DIGIT_ZERO], "top_k": 10**22},  # legal for both: the route refuses top_k > classes
        {"instances": [DIGIT_ZERO], "coverage": 10**400},
        {"instances": [[1e308, -1e308]]},
        {"instances": [{}]},
        {"instances": [[]]},
    ]
    for value in suspicious:
        body = json.dumps(value).encode()
        try:
            reference = reference_parse(body)
        except pydantic.ValidationError:
            with pytest.raises(InvalidInput):
                parse_json(body)
        else:
            options, rows = parse_json(body)
            assert rows == list(reference.instances)
            assert options.top_k == reference.top_k and options.coverage == reference.coverage
