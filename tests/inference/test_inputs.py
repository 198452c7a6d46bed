"""The one conversion rule every path follows (``service.inference.inputs``), checked value by value at the edges
of each type: exact or refused, never rounded or wrapped behind the client's back."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from service.card import IOInfo
from service.errors import InvalidInput, PayloadTooLarge
from service.inference.inputs import InputSignature, check_instance_count, to_dtype

pytestmark = pytest.mark.unit


def convert(value: Any, source: str, target: str) -> Any:
    converted = to_dtype(np.array([[value]], dtype=source), np.dtype(target), "x")
    assert converted.dtype == np.dtype(target)
    return converted[0, 0].item()


@pytest.mark.parametrize(
    ("value", "source", "target", "expected"),
    [
        (2**24, "int64", "float32", float(2**24)),
        (-(2**63), "int64", "float32", -(2.0**63)),
        (2**63, "uint64", "float32", 2.0**63),
        (2**53, "int64", "float64", 2.0**53),
        (255, "uint8", "float16", 255.0),
        (2048, "int16", "float16", 2048.0),
        (0.1, "float64", "float32", float(np.float32(0.1))),  # a float is rounded
        (65504.0, "float64", "float16", 65504.0),
        (3.0, "float64", "int64", 3),
        (-(2.0**63), "float64", "int64", -(2**63)),
        (4294967295.0, "float64", "uint32", 4294967295),
        (2**63 - 1, "uint64", "int64", 2**63 - 1),
        (-128, "int64", "int8", -128),
        (7, "int8", "uint8", 7),
    ],
)
def test_exact_conversions_are_accepted(value: Any, source: str, target: str, expected: Any) -> None:
    assert convert(value, source, target) == expected


@pytest.mark.parametrize(
    ("value", "source", "target", "says"),
    [
        (2**24 + 1, "int64", "float32", "no exact float32 value (the nearest is 16777216.0)"),
        (2**53 + 1, "int64", "float64", "no exact float64 value"),  # numpy calls int64 -> float64 'safe'
        (2**64 - 1, "uint64", "float32", "no exact float32 value"),
        (2049, "int16", "float16", "no exact float16 value"),
        (70000, "int32", "float16", "no exact float16 value"),
        (1e39, "float64", "float32", "is not a finite float32"),
        (np.nan, "float32", "float32", "nan is not a finite float32"),
        (-np.inf, "float16", "float64", "-inf is not a finite float64"),
        (70000.0, "float64", "float16", "is not a finite float16"),
        (2.5, "float64", "int64", "2.5 is not an integer; the model's input is int64"),
        (np.nan, "float64", "int32", "nan is not an integer"),
        (2.0**63, "float64", "int64", "outside the range of int64"),
        (-1.0, "float32", "uint8", "outside the range of uint8 (0..255)"),
        (2**63, "uint64", "int64", "9223372036854775808 is outside the range of int64"),
        (-1, "int8", "uint32", "-1 is outside the range of uint32"),
        (2**31, "int64", "int32", "outside the range of int32"),
    ],
)
def test_inexact_conversions_are_refused_naming_the_cell(value: Any, source: str, target: str, says: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        convert(value, source, target)
    assert refused.value.message.startswith("x[0][0] = "), refused.value.message
    assert says in refused.value.message, refused.value.message
    assert refused.value.details["field"] == "x[0][0]"


def test_the_first_bad_cell_is_named_with_its_feature() -> None:
    values = np.zeros((3, 2, 2))
    values[1, 0, 1] = values[2, 1, 1] = np.inf
    with pytest.raises(InvalidInput, match=r"^instances\[1\]\[0\]\[1\] = inf is not a finite float32"):
        InputSignature("x", np.dtype("float32"), (2, 2)).convert(values)
    flat = InputSignature.flat(2, ["a", "b"])
    with pytest.raises(InvalidInput, match=r"^instances\[0\]\[1\] \('b'\) = 1e\+39"):
        flat.convert(np.array([[1.0, 1e39]]))


def test_old_cards_are_flat_float32() -> None:
    signature = InputSignature.of(IOInfo(n_features=64, feature_names=None))
    assert (signature.name, signature.dtype, signature.instance_shape) == ("features", np.dtype("float32"), (64,))
    assert signature.shape == (-1, 64) and signature.is_flat and signature.n_values == 64
    image = InputSignature.of(
        IOInfo(input="image", n_features=64, feature_names=None, input_dtype="uint8", input_shape=(-1, 1, 8, 8))
    )
    assert image.shape_text == "[N, 1, 8, 8]" and image.integral and not image.is_flat
    assert hash(image) == hash(InputSignature("image", np.dtype("uint8"), (1, 8, 8))) and image == InputSignature(
        "image", np.dtype("uint8"), (1, 8, 8)
    )


@pytest.mark.parametrize(
    ("shape", "accepted"),
    [
        ((2, 1, 8, 8), True),
        ((1, 1, 8, 8), True),
        ((0, 1, 8, 8), False),
        ((2, 64), False),
        ((2, 1, 8), False),
        ((), False),
    ],
)
def test_batch_shapes(shape: tuple[int, ...], accepted: bool) -> None:
    signature = InputSignature("image", np.dtype("float32"), (1, 8, 8))
    if accepted:
        signature.check_batch_shape(shape, "features", "body")
        return
    with pytest.raises(InvalidInput) as refused:
        signature.check_batch_shape(shape, "features", "body")
    assert f"must have shape [N, 1, 8, 8] with N >= 1, got {list(shape)}" in refused.value.message
    assert refused.value.details["expected"] == [-1, 1, 8, 8]


def test_free_dimensions_take_any_size_from_one() -> None:
    signature = InputSignature("ids", np.dtype("int64"), (-1,))
    signature.check_batch_shape((3, 1), "x", "x")
    signature.check_batch_shape((3, 500), "x", "x")
    with pytest.raises(InvalidInput, match=r"\[N, -1\] \(-1: any size\) with N >= 1, got \[3, 0\]"):
        signature.check_batch_shape((3, 0), "x", "x")


def test_json_integer_literals_are_checked_only_where_they_could_be_inexact() -> None:
    signature = InputSignature.flat(3)
    calls: list[int] = []

    def literals(rows: list[Any]) -> Any:
        def give() -> list[Any]:
            calls.append(1)
            return rows

        return give

    small = [[1, 2, 3]]
    assert signature.from_json([[1.0, 2.0, 3.0]], literals(small)).tolist() == [[1, 2, 3]]
    assert calls == [], "no value above 2**24: the literals are never decoded"
    as_floats = [[float(2**24 + 1), 2.0, 1e30]]
    assert signature.from_json(as_floats, literals(as_floats))[0, 0] == 2**24  # floats: rounded
    with pytest.raises(InvalidInput, match=r"instances\[0\]\[0\] = 16777217 is an integer with no exact float32"):
        signature.from_json(as_floats, literals([[2**24 + 1, 2, 1e30]]))
    exact = [[2**40, 2, 3]]
    assert signature.from_json([[2.0**40, 2.0, 3.0]], literals(exact))[0, 0] == 2**40
    named = InputSignature.flat(2, ["a", "b"])
    with pytest.raises(InvalidInput, match=r"instances\[0\]\[1\] \('b'\) = 16777217"):
        named.from_json([{"b": float(2**24 + 1), "a": 1.0}], literals([{"b": 2**24 + 1, "a": 1}]))
    half = InputSignature("h", np.dtype("float16"), (2,))
    with pytest.raises(InvalidInput, match=r"= 2049 is an integer with no exact float16 value"):
        half.from_json([[2049.0, 1.0]], literals([[2049, 1]]))
    double = InputSignature("d", np.dtype("float64"), (1,))
    with pytest.raises(InvalidInput, match=r"= 9007199254740993 is an integer with no exact float64 value"):
        double.from_json([[float(2**53 + 1)]], literals([[2**53 + 1]]))


def test_json_instances_of_any_rank_and_their_shape_problems() -> None:
    signature = InputSignature("image", np.dtype("float32"), (1, 2, 2))
    assert signature.from_json([[[[1, 2], [3, 4]]]]).shape == (1, 1, 2, 2)
    problems = {
        "instances[1][0] has 3 items": [[[[1, 2], [3, 4]]], [[[1, 2], [3, 4], [5, 6]]]],
        "instances[0][0][1] has 1 items": [[[[1, 2], [3]]]],
        "instances[0][0][1] is a number where a list of 2 belongs": [[[[1, 2], 3]]],
    }
    for says, instances in problems.items():
        with pytest.raises(InvalidInput) as refused:
            signature.from_json(instances)
        assert refused.value.message.startswith(says) and "[1, 2, 2]" in refused.value.message, refused.value.message
    free = InputSignature("ids", np.dtype("int64"), (-1, 2))
    with pytest.raises(InvalidInput, match=r"instances\[1\] has shape \[1, 2\], instances\[0\] has \[2, 2\]"):
        free.from_json([[[1, 2], [3, 4]], [[1, 2]]])
    with pytest.raises(InvalidInput, match=r"instances\[0\]\[1\] = 9223372036854775808 is outside the range of int64"):
        InputSignature("ids", np.dtype("int64"), (2,)).from_json([[1, 2**63]])


def test_the_instance_limit() -> None:
    check_instance_count(5, 5)
    with pytest.raises(PayloadTooLarge, match="6 instances exceed the limit of 5"):
        check_instance_count(6, 5)
