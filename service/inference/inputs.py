"""The model's one input as its card declares it, and the one set of checks every protocol applies to it.

``/v1`` JSON, ``/v1`` ``.npy`` and ``/v2`` (JSON or binary tensors) each decode their bytes their own way,
then hand what they decoded to the same ``InputSignature``: it checks the instance shape and the number of
instances, converts the values to the declared dtype and refuses anything it would have to guess. So a
value is accepted or refused the same way whichever path it came by, and every refusal names the cell
(``instances[3][0][5][2]``, or ``<input>[3][0][5][2]`` on ``/v2``) and what was expected.

Conversions are exact or refused (the rule every path follows):

- A float to a float input: must be finite and within the input type's range, then rounded to the nearest
  value of that type (0.1 has no exact float32 value either; a float is a float).
- An integer to a float input: must have an exact value in that type, or it is refused. An integer claims
  exactness, and the graph would silently see another number: 16777217 sent to a float32 input would be
  16777216. "Integer" is what the client declared: a JSON integer literal (``16777217``, not
  ``16777217.0``), an integer ``.npy`` dtype, an ``INT*``/``UINT*`` ``/v2`` datatype. A client that accepts
  rounding sends it as a float.
- A float to an integer input: must be a finite whole number within the integer type's range (3.0 is 3;
  3.5 is refused).
- An integer to an integer input: must be within the type's range.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.card import IOInfo
from service.errors import InvalidInput, PayloadTooLarge

FREE = -1  # a free instance dimension in a signature (any size >= 1)
_SHOWN = 5  # names listed in a message
_SHOWN_DIMS = 8  # dimensions of a client's shape shown in a message
_SHOWN_DIGITS = 40  # digits of a client's integer shown in a message
FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_instance_count(count: int, max_instances: int) -> None:
    """413 past ``CALIBSERVE_MAX_INSTANCES``: one limit, one message, on every path."""
    if count > max_instances:
        raise too_many_instances(str(count), max_instances)


def too_many_instances(count: str, limit: int) -> PayloadTooLarge:
    """``count`` is text: "1001", or "more than 1000" where the count was not worth finishing."""
    return PayloadTooLarge(
        f"{count} instances exceed the limit of {limit} per request (CALIBSERVE_MAX_INSTANCES)",
        {"field": "instances", "limit": limit},
    )


@dataclass(frozen=True, slots=True)
class InputSignature:
    """Name, dtype and instance shape of the model's input (-1: a free dimension), and its feature names.

    Built once per loaded model from the card (``of``); hashable, so decoders can be cached per signature.
    """

    name: str
    dtype: np.dtype[Any]
    instance_shape: tuple[int, ...]
    feature_names: tuple[str, ...] | None = None
    # Derived once, here, because every request reads them (numpy's dtype.name and finfo cost microseconds).
    is_flat: bool = field(init=False, repr=False, compare=False)  # one dimension per instance
    integral: bool = field(init=False, repr=False, compare=False)
    _largest: float = field(init=False, repr=False, compare=False)  # a float type's largest finite value
    _exact_below: float = field(init=False, repr=False, compare=False)  # integers below this are exact in it
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        integral = self.dtype.kind in "iu"
        object.__setattr__(self, "is_flat", len(self.instance_shape) == 1)
        object.__setattr__(self, "integral", integral)
        object.__setattr__(self, "_largest", 0.0 if integral else float(np.finfo(self.dtype).max))
        object.__setattr__(self, "_exact_below", 0.0 if integral else float(2 ** (np.finfo(self.dtype).nmant + 1)))
        object.__setattr__(self, "_hash", hash((self.name, self.dtype, self.instance_shape, self.feature_names)))

    def __hash__(self) -> int:  # decoders are cached per signature: hashed on every request
        return self._hash

    @classmethod
    def of(cls, io: IOInfo) -> InputSignature:
        """The card's input; a card written before ``input_shape`` existed declares float32 ``(-1, n_features)``."""
        names = io.feature_names if len(io.instance_shape) == 1 else None
        return cls(io.input, np.dtype(io.input_dtype), tuple(io.instance_shape), names)

    @classmethod
    def flat(
        cls, n_features: int, feature_names: Sequence[str] | None = None, name: str = "features"
    ) -> InputSignature:
        """A float32 ``[N, n_features]`` input (the shape every model had before any shape was served)."""
        return cls(name, np.dtype(np.float32), (n_features,), tuple(feature_names) if feature_names else None)

    # -- what it declares ------------------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, ...]:
        """The full input shape, batch first (-1), as the card and the protocols write it."""
        return (FREE, *self.instance_shape)

    @property
    def n_values(self) -> int | None:
        """Values in one instance; None if a dimension is free."""
        return None if FREE in self.instance_shape else math.prod(self.instance_shape)

    @property
    def shape_text(self) -> str:
        """``[N, 1, 8, 8]``: what messages say the input is."""
        return "[" + ", ".join(["N", *map(str, self.instance_shape)]) + "]" + self._free_note

    @property
    def instance_text(self) -> str:
        """``[1, 8, 8]``: what messages say one instance is."""
        return "[" + ", ".join(map(str, self.instance_shape)) + "]" + self._free_note

    @property
    def _free_note(self) -> str:
        return " (-1: any size)" if FREE in self.instance_shape else ""

    def describe(self) -> str:
        """``'image' float32 [N, 1, 8, 8]``"""
        return f"{self.name!r} {self.dtype.name} {self.shape_text}"

    # -- shapes ------------------------------------------------------------------------------------------

    def accepts_instance(self, shape: Sequence[int]) -> bool:
        """One instance of ``shape`` fits: same rank, fixed dimensions equal, free ones at least 1."""
        return len(shape) == len(self.instance_shape) and all(
            got >= 1 if want == FREE else got == want for want, got in zip(self.instance_shape, shape, strict=True)
        )

    def check_batch_shape(self, shape: Sequence[int], what: str, field: str) -> None:
        """``shape`` is ``[N, *instance]`` with N >= 1, or a 422 saying what was expected (counts come after:
        the caller checks N against the instance limit)."""
        if (
            len(shape) >= 1
            and shape[0] >= 1
            and (tuple(shape[1:]) == self.instance_shape or self.accepts_instance(shape[1:]))
        ):
            return
        got = list(shape)
        dims = [short_number(dim) for dim in got[:_SHOWN_DIMS]] + (["…"] if len(got) > _SHOWN_DIMS else [])
        shown = "[" + ", ".join(dims) + "]"
        raise InvalidInput(
            f"{what} must have shape {self.shape_text} with N >= 1, got {shown}",
            {"field": field, "shape": got[:_SHOWN_DIMS], "expected": list(self.shape)},
        )

    # -- values ------------------------------------------------------------------------------------------

    def convert(self, values: NDArray[Any], field: str = "instances", as_float: str = "a float") -> NDArray[Any]:
        """``values`` (``[N, *instance]``, any numeric dtype) as the declared dtype, exactly (module docstring)
        or a 422 naming the first cell at fault; ``as_float`` says how the caller's path sends a float."""
        return to_dtype(values, self.dtype, field, names=self.feature_names, as_float=as_float)

    def from_json(
        self,
        instances: Sequence[Any],
        literals: Callable[[], Sequence[Any]] | None = None,
        field: str = "instances",
    ) -> NDArray[Any]:
        """JSON instances, as the request schema validated them (numbers in nested lists, or objects keyed by
        feature name for a flat input; Python ints for an integer input), as ``[N, *instance]`` of the
        declared dtype.

        The schema reads every number of a float input as a float. ``literals()`` gives the same instances
        with JSON's integers as Python ints: it is called only when a value is large enough that an integer
        could be one the input's float type cannot hold (|x| >= 2**24 for float32), so the hot path never pays
        for it. Without it, every value is taken for a float."""
        if not instances:
            raise InvalidInput(f"{field} is empty: send at least one row", {"field": field})
        container: type[np.generic] = np.int64 if self.integral else np.float64
        try:
            values = self._flat_rows(instances, container, field) if self.is_flat else self._nested(instances, field)
        except OverflowError:  # a Python int past int64 (an integer input) or past float64 (a float input)
            raise self._unconvertible(instances, container, field) from None
        if self.integral:
            return to_dtype(values, self.dtype, field, names=self.feature_names)
        # A float input (the hot path): one pass finds the largest magnitude, which says both whether every
        # value is finite and in range (NaN propagates) and whether any could be an inexact integer.
        peak = np.abs(values).max()
        if not peak <= self._largest:
            to_dtype(values, self.dtype, field, names=self.feature_names)  # raises, naming the cell
        if literals is not None and peak >= self._exact_below:
            self._check_integer_literals(values, literals, field)
        return values.astype(self.dtype)

    def _flat_rows(self, rows: Sequence[Any], container: type[np.generic], field: str) -> NDArray[Any]:
        (width,) = self.instance_shape
        if width == FREE:
            width = len(rows[0]) if isinstance(rows[0], list) else 0
        if all(isinstance(row, list) and len(row) == width for row in rows) and width >= 1:
            return np.asarray(rows, dtype=container)  # the common case: one numpy call
        index = {name: i for i, name in enumerate(self.feature_names)} if self.feature_names is not None else None
        values = np.empty((len(rows), width), dtype=container)
        for i, row in enumerate(rows):
            if isinstance(row, Mapping):
                values[i] = self._named_row(i, row, index, field)
            elif len(row) != width or not row:
                raise self._width_error(i, len(row), width, field)
            else:
                values[i] = row
        return values

    def _width_error(self, i: int, got: int, width: int, field: str) -> InvalidInput:
        if got == 0 or width == 0:
            return InvalidInput(
                f"{field}[{i}] has no values; the model expects instances of shape {self.instance_text}",
                {"field": f"{field}[{i}]", "expected": list(self.instance_shape)},
            )
        if self.instance_shape[0] == FREE:
            return InvalidInput(
                f"{field}[{i}] has {got} features; {field}[0] has {width}: the instances of one request must "
                f"have the same length (this model's input is {self.shape_text})",
                {"field": f"{field}[{i}]", "expected": width, "got": got},
            )
        return width_error(f"{field}[{i}]", got, width)

    def _named_row(self, i: int, row: Mapping[str, Any], index: dict[str, int] | None, field: str) -> NDArray[Any]:
        if index is None:
            raise InvalidInput(
                f"{field}[{i}] is an object, but this model's card has no feature names; send a list of "
                f"{self.instance_shape[0]} numbers",
                {"field": f"{field}[{i}]"},
            )
        unknown = [name for name in row if name not in index]
        if unknown:
            raise InvalidInput(
                f"{field}[{i}] has unknown feature name(s): {', '.join(map(repr, unknown[:_SHOWN]))}",
                {"field": f"{field}[{i}]", "unknown": unknown[:50]},
            )
        if len(row) != len(index):
            missing = [name for name in index if name not in row]
            raise InvalidInput(
                f"{field}[{i}] lacks {len(missing)} feature(s): {', '.join(map(repr, missing[:_SHOWN]))}"
                + (", …" if len(missing) > _SHOWN else ""),
                {"field": f"{field}[{i}]", "missing": missing[:50]},
            )
        values = np.empty(len(index), dtype=np.float64 if not self.integral else np.int64)
        for name, value in row.items():
            values[index[name]] = value
        return values

    def _nested(self, instances: Sequence[Any], field: str) -> NDArray[Any]:
        container = np.int64 if self.integral else np.float64
        try:
            values = np.asarray(instances, dtype=container)
        except ValueError:  # ragged: numpy cannot make one array of them
            raise self._shape_problem(instances, field) from None
        if not self.accepts_instance(values.shape[1:]):
            raise self._shape_problem(instances, field)
        return values

    def _shape_problem(self, instances: Sequence[Any], field: str) -> InvalidInput:
        """The first place an instance departs from the model's shape (a list of the wrong length, a number
        where a list belongs), or, with free dimensions, the first instance whose lists disagree in length
        or whose shape is not the first instance's."""
        first: tuple[int, ...] | None = None
        for i, instance in enumerate(instances):
            at = f"{field}[{i}]"
            misfit = _misfit(instance, self.instance_shape, at)
            if misfit is not None:
                where, problem = misfit
                return InvalidInput(
                    f"{where} {problem}; the model expects instances of shape {self.instance_text}",
                    {"field": where, "expected": list(self.instance_shape)},
                )
            shape = nested_shape(instance)
            if shape is None:
                return InvalidInput(
                    f"{at} is ragged (its lists at one depth differ in length); the model expects instances of "
                    f"shape {self.instance_text}",
                    {"field": at, "expected": list(self.instance_shape)},
                )
            if first is not None and shape != first:
                return InvalidInput(
                    f"{at} has shape {list(shape)}, {field}[0] has {list(first)}: the instances of one request "
                    f"must have the same shape (this model's input is {self.shape_text})",
                    {"field": at, "expected": list(first), "got": list(shape)[:_SHOWN_DIMS]},
                )
            first = shape
        return InvalidInput(  # not reached for validated instances; said plainly all the same
            f"{field} must be instances of shape {self.instance_text}", {"field": field}
        )

    def _unconvertible(self, instances: Sequence[Any], container: type[np.generic], field: str) -> InvalidInput:
        """The first value numpy could not put in ``container`` (a Python int past its range), named."""
        for path, value in _walk(instances):
            try:
                np.asarray(value, dtype=container)
            except OverflowError:
                at = field + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
                label = self.dtype.name
                return InvalidInput(f"{at} = {short_number(value)} is outside the range of {label}", {"field": at})
        return InvalidInput(f"{field} holds a number outside the range of {self.dtype.name}", {"field": field})

    def _check_integer_literals(
        self, values: NDArray[np.float64], literals: Callable[[], Sequence[Any]], field: str
    ) -> None:
        """Refuse the first JSON integer the float input cannot hold exactly (see the module docstring)."""
        bound = self._exact_below
        with np.errstate(invalid="ignore"):
            # >=: a JSON integer past 2**53 reached float64 rounded, possibly onto the bound itself
            suspects = np.flatnonzero((np.abs(values) >= bound) & (values == np.trunc(values)))
        if not len(suspects):
            return
        sent = literals()
        for position in suspects.tolist():
            index = np.unravel_index(position, values.shape)
            node: Any = sent[int(index[0])]
            if isinstance(node, Mapping) and self.feature_names is not None:
                node = node.get(self.feature_names[int(index[1])])
            else:
                for i in index[1:]:
                    node = node[int(i)]
            if type(node) is int and not _int_is_exact(node, self.dtype):
                at = field + "".join(f"[{int(i)}]" for i in index)
                as_float = f"a float ({node}.0)" if len(str(node)) <= _SHOWN_DIGITS else "a float"
                raise inexact_integer(at, node, self.dtype.name, _feature(self.feature_names, index), as_float)


# -- conversion: the one rule, whatever the path ---------------------------------------------------------------


def to_dtype(
    values: NDArray[Any],
    dtype: np.dtype[Any],
    field: str,
    *,
    label: str | None = None,
    names: Sequence[str] | None = None,
    as_float: str = "a float",
) -> NDArray[Any]:
    """``values`` as ``dtype``, exactly or refused (module docstring); the refusal names the first cell at
    fault as ``field[i][j]...`` (and its feature name if ``names`` label the last axis).

    ``label`` names the type in messages (``/v2`` says ``UINT8 (uint8)``); ``as_float`` says how to send a
    value as a float on the caller's path. The common case (float64 or float32 values to a float32 input) is
    one comparison over the array and one cast."""
    source = values.dtype
    if source.kind not in "fiu":
        raise InvalidInput(f"{field} must be numbers, got dtype {source}", {"field": field, "dtype": str(source)})
    label = label or _name(dtype)
    if dtype.kind == "f":
        if source.kind == "f":
            largest = _float_max(dtype)
            # A narrower or equal float type: finiteness is the only question; a wider one: the range (NaN
            # fails the comparison too).
            bad = ~np.isfinite(values) if source.itemsize <= dtype.itemsize else ~(np.abs(values) <= largest)
            if bad.any():
                at, value, feature = _first(bad, values, field, names)
                raise InvalidInput(
                    f"{at}{_named(feature)} = {float(value)!r} is not a finite {label} "
                    f"(|x| must be at most {largest:.7g})",
                    {"field": at, "feature": feature},
                )
            return values.astype(dtype, copy=False)
        if _integers_exact_in(source, dtype):
            return values.astype(dtype)
        with np.errstate(invalid="ignore", over="ignore"):
            converted = values.astype(dtype)
            bad = ~np.isfinite(converted) | (converted.astype(source) != values)
        if bad.any():
            at, value, feature = _first(bad, values, field, names)
            raise inexact_integer(at, int(value), label, feature, as_float)
        return converted
    info = np.iinfo(dtype)
    if source.kind == "f":
        low, high = float(info.min), float(info.max) + 1.0  # powers of two: exact in every float type
        with np.errstate(invalid="ignore"):
            whole = np.isfinite(values) & (values == np.trunc(values))
            bad = ~(whole & (values >= low) & (values < high))
        if bad.any():
            at, value, feature = _first(bad, values, field, names)
            number = float(value)
            problem = (
                f"is outside the range of {label} ({info.min}..{info.max})"
                if math.isfinite(number) and number.is_integer()
                else f"is not an integer; the model's input is {label}"
            )
            raise InvalidInput(f"{at}{_named(feature)} = {number!r} {problem}", {"field": at, "feature": feature})
        return values.astype(dtype)
    if np.can_cast(source, dtype, "safe"):
        return values.astype(dtype, copy=False)
    own = np.iinfo(source)
    low_int, high_int = max(info.min, own.min), min(info.max, own.max)  # both representable in the source type
    bad = (values < source.type(low_int)) | (values > source.type(high_int))
    if bad.any():
        at, value, feature = _first(bad, values, field, names)
        raise InvalidInput(
            f"{at}{_named(feature)} = {int(value)} is outside the range of {label} ({info.min}..{info.max})",
            {"field": at, "feature": feature},
        )
    return values.astype(dtype)


def inexact_integer(at: str, value: int, label: str, feature: str | None, as_float: str) -> InvalidInput:
    """An integer the input's float type cannot hold: refused, never rounded behind the client's back."""
    nearest = ""
    if label in _FLOAT_NAMES:
        try:
            with np.errstate(over="ignore"):
                rounded = float(np.dtype(label).type(value))
        except OverflowError:  # past float64
            rounded = math.inf
        nearest = f" (the nearest is {rounded!r})" if math.isfinite(rounded) else f" (it is beyond {label}'s range)"
    return InvalidInput(
        f"{at}{_named(feature)} = {short_number(value)} is an integer with no exact {label} value{nearest}; "
        f"send it as {as_float} if rounding is acceptable",
        {"field": at, "feature": feature},
    )


_FLOAT_NAMES = ("float16", "float32", "float64")
_NAMES: dict[np.dtype[Any], str] = {}
_FLOAT_MAX: dict[np.dtype[Any], float] = {}


def _name(dtype: np.dtype[Any]) -> str:
    """``dtype.name``, remembered (numpy computes it anew each time, a few microseconds per request)."""
    name = _NAMES.get(dtype)
    if name is None:
        name = _NAMES[dtype] = dtype.name
    return name


def _float_max(dtype: np.dtype[Any]) -> float:
    largest = _FLOAT_MAX.get(dtype)
    if largest is None:
        largest = _FLOAT_MAX[dtype] = float(np.finfo(dtype).max)
    return largest


def _integers_exact_in(source: np.dtype[Any], dtype: np.dtype[Any]) -> bool:
    """Every value of the integer type ``source`` has an exact value in the float type ``dtype`` (uint8 and
    int16 in float32, int32 in float64). Not ``np.can_cast(..., "safe")``: numpy calls int64 -> float64
    safe, and 2**53 + 1 has no float64 value."""
    bits = source.itemsize * 8 - (1 if source.kind == "i" else 0)
    return bits <= np.finfo(dtype).nmant + 1


def _int_is_exact(value: int, dtype: np.dtype[Any]) -> bool:
    try:
        converted = dtype.type(value)
    except OverflowError:
        return False
    return bool(np.isfinite(converted)) and int(converted) == value


def _first(
    bad: NDArray[np.bool_], values: NDArray[Any], field: str, names: Sequence[str] | None
) -> tuple[str, Any, str | None]:
    """The first cell flagged in ``bad``: its path, its value and its feature name (flat named inputs)."""
    index = np.unravel_index(int(np.argmax(bad)), bad.shape)
    at = field + "".join(f"[{int(i)}]" for i in index)
    return at, values[index], _feature(names, index)


def _feature(names: Sequence[str] | None, index: tuple[Any, ...]) -> str | None:
    return names[int(index[-1])] if names is not None and len(index) == 2 else None


def _named(feature: str | None) -> str:
    return f" ({feature!r})" if feature is not None else ""


def short_number(value: int | float) -> str:
    """An integer of any length, short enough for a message (JSON allows 4300 digits)."""
    text = repr(value)
    if len(text) <= _SHOWN_DIGITS:
        return text
    return f"{text[:12]}… (an integer of {len(text.lstrip('-'))} digits)"


def width_error(at: str, got: int | str, width: int) -> InvalidInput:
    """A flat instance of the wrong length (``got`` may be text: "more than 64")."""
    return InvalidInput(
        f"{at} has {got} features; the model expects {width}",
        {"field": at, "expected": width, "got": got},
    )


# -- nested JSON values ----------------------------------------------------------------------------------------


def nested_shape(value: Any) -> tuple[int, ...] | None:
    """The shape of nested lists (``()`` for a number), or None if they are ragged."""
    if not isinstance(value, list):
        return ()
    if not value:
        return (0,)
    shapes = {nested_shape(item) for item in value}
    if len(shapes) != 1:
        return None
    (inner,) = shapes
    return None if inner is None else (len(value), *inner)


def _misfit(value: Any, shape: tuple[int, ...], at: str) -> tuple[str, str] | None:
    """The first place ``value`` departs from ``shape`` in document order, as (path, what is wrong), or None;
    a free dimension takes any length >= 1 (whether its lists agree is ``nested_shape``'s to say)."""
    if not shape:
        return (at, "is a list where a number belongs") if isinstance(value, list) else None
    if not isinstance(value, list):
        return at, f"is a number where a list of {'some' if shape[0] == FREE else shape[0]} belongs"
    if len(value) != shape[0] and (shape[0] != FREE or not value):
        return at, f"has {len(value)} items"
    for j, item in enumerate(value):
        found = _misfit(item, shape[1:], f"{at}[{j}]")
        if found is not None:
            return found
    return None


def _walk(value: Any, path: tuple[int | str, ...] = ()) -> Iterator[tuple[tuple[int | str, ...], Any]]:
    """Every number in nested lists and objects with its path, in document order."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(item, (*path, i))
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _walk(item, (*path, key))
    else:
        yield path, value


def check_instance_widths(instances: Sequence[Any], signature: InputSignature, field: str = "instances") -> None:
    """Refuse the first instance with a list longer than the signature's fixed dimension there, before any
    value is validated: O(lists), so a parser can run it first (an instance of two million strings is
    refused for its length, not after two million type errors), as is anything but a list where the shape
    has a dimension. Values (the numbers) are never looked at."""
    if signature.is_flat:
        (width,) = signature.instance_shape
        if width != FREE:
            for i, row in enumerate(instances):
                if isinstance(row, list | dict) and len(row) > width:
                    raise width_error(f"{field}[{i}]", len(row), width)
        return
    for i, instance in enumerate(instances):
        _check_widths(instance, signature.instance_shape, f"{field}[{i}]", signature)


def _check_widths(value: Any, shape: tuple[int, ...], at: str, signature: InputSignature) -> None:
    if not shape:
        return
    if not isinstance(value, list):
        size = "some" if shape[0] == FREE else shape[0]
        what = f"a number where a list of {size} belongs" if type(value) in (int, float) else "not a list"
        raise InvalidInput(
            f"{at} is {what}; the model expects instances of shape {signature.instance_text}",
            {"field": at, "expected": list(shape)},
        )
    if shape[0] != FREE and len(value) > shape[0]:
        raise InvalidInput(
            f"{at} has {len(value)} items; the model expects instances of shape {signature.instance_text}",
            {"field": at, "expected": shape[0], "got": len(value)},
        )
    if len(shape) > 1:
        for j, item in enumerate(value):
            _check_widths(item, shape[1:], f"{at}[{j}]", signature)
