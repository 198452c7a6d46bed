"""Request bodies -> (options, instances), fast where the body is well formed.

JSON: msgspec decodes a well-formed body straight into typed lists in one C pass (it refuses booleans,
strings, null, NaN and unknown keys where pydantic's strict model does), and the model's
``InputSignature`` turns the instances into its input (``from_json``: shape, dtype, exactness). The
typed lists follow the signature: nested to the instance's rank, floats or integers as the input is. A
body msgspec refuses is decoded again the slow way, ``json.loads`` plus the strict pydantic request
model (``schemas.request_model``), only to produce the precise error message: so every refusal reads as
it always has, and a valid body never pays for pydantic's element-by-element validation.

Binary: ``application/x-npy`` carries the ``[N, *instance]`` input as a NumPy ``.npy`` file, with the
options in the query string, for bulk scoring without JSON floats; the signature converts it (``convert``)
by the same rules as JSON and ``/v2``.

Hostile input gets a 4xx, never a 500 or a stall. Every JSON body the service decodes the slow way goes
through ``load_json`` (integers past CPython's 4300-digit limit, lone UTF-16 surrogates, invalid UTF-8 and
nesting become 400s naming the problem); every count or number sent as text (a query parameter, a header)
through ``parse_count`` / ``parse_number``; every client value an error message echoes through ``shown``
(bounded, whatever was sent). A refused body costs little: cheap checks (item counts and row widths,
read from the undecoded JSON of a body over ``GATE_BYTES``) come before element-by-element validation,
which only ever sees a bounded number of bad elements, and bodies over ``OFF_LOOP_BYTES`` are parsed in
a worker thread so the event loop keeps answering meanwhile.
"""

from __future__ import annotations

import functools
import io
import json
import math
import re
import reprlib
import struct
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar, cast

import anyio.to_thread
import msgspec
import numpy as np
import pydantic
from numpy.typing import NDArray

from service.api.errors import invalid_request
from service.api.schemas import FeedbackItem, FeedbackRequest, PredictRequest, request_model
from service.errors import InvalidInput, MalformedRequest, PayloadTooLarge, ServiceError
from service.inference.inputs import (
    FREE,
    InputSignature,
    check_instance_count,
    check_instance_widths,
    too_many_instances,
    width_error,
)

NPY_MEDIA_TYPE = "application/x-npy"
NPY_DTYPES = "a float (float16, float32, float64) or an integer type"
_QUERY_OPTIONS = ("coverage", "top_k", "include_logits", "model")
T = TypeVar("T")

# Bodies larger than this are parsed in a worker thread: decoding and validating a few MB takes tens to
# hundreds of milliseconds, which on the event loop would hold up every other request (/health/live
# included). Smaller bodies (a single-instance predict is ~300 bytes) stay inline: a thread hop would cost
# them more than their parse.
OFF_LOOP_BYTES = 64 * 1024
# Bodies larger than this have their item counts and row widths read before they are decoded, and are
# refused for those without the decode (an 8 MB body of two million items: microseconds instead of
# 0.1-0.6 s holding the GIL). A smaller body decodes in tens of ms, so its refusal can name bad values
# first, as it always has (more useful than a count, and what a schema fuzzer expects: 422 for them).
GATE_BYTES = 1024 * 1024
# Element-by-element validation (pydantic) sees at most this many suspect rows or items and unknown keys:
# the error names the first few problems anyway, and a body of 2M bad elements must not build 2M errors.
_SUSPECTS = 10
_MAX_DIGITS = 18  # a count sent as text: 10**18 is past every limit, and int() stays far from its own
_MAX_NUMBER_CHARS = 64  # a number sent as text (coverage=0.95)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")
_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 60
_SHOWN.maxlong = 40
_FLOAT_MAX = sys.float_info.max


def shown(value: Any) -> str:
    """``repr`` of a client's value for an error message, cut short (``reprlib``): a message echoes what
    was sent so the client can find it, but must stay small whatever was sent (a 1 MB string, a list of
    a million items)."""
    return _SHOWN.repr(value)


async def parse_off_loop(body: bytes, parse: Callable[[], T]) -> T:
    """``parse()`` inline for a small body, in a worker thread for a large one (``OFF_LOOP_BYTES``).

    The thread does not make a big parse cheaper, but it lets the event loop answer other requests
    between the parse's steps (json.loads, msgspec and pydantic each hold the GIL for one call, so a
    single call over an 8 MB body still holds it for that long: tens of ms per MB)."""
    if len(body) <= OFF_LOOP_BYTES:
        return parse()
    parsed, refused = await anyio.to_thread.run_sync(_outcome, parse)
    if refused is not None:
        try:
            raise refused
        finally:
            del refused  # or this frame and the error's traceback would hold each other (and the body)
    return cast(T, parsed)  # (parsed, None) or (None, error): here it is the first


def _outcome(parse: Callable[[], T]) -> tuple[T | None, ServiceError | None]:
    """``parse()``'s value, or its refusal returned rather than raised, stripped of its traceback.

    An exception raised across anyio's thread boundary sits in a reference cycle (future -> exception
    -> traceback -> frames), so the frames' locals (the whole body, its decoded values) stay alive until
    the next full garbage collection, which ``tune_garbage_collector`` makes rare: refusing 8 MB bodies
    grew the process by their size each time. The message is already written; the traceback of a
    refused request is of no use."""
    try:
        return parse(), None
    except ServiceError as error:
        error.__context__ = error.__cause__ = None
        return None, error.with_traceback(None)


# -- text and JSON: the one way in for client bytes ---------------------------------------------------


def parse_count(text: str, field: str, *, minimum: int = 0, error: type[InvalidInput] = InvalidInput) -> int:
    """A non-negative integer sent as text (a query parameter, a header), or ``error`` naming ``field``.

    ASCII digits only (``int()`` would also take '1_000', ' 7' and other scripts' digits such as '٣'), at
    most 18 significant ones: ``int()`` of more than 4300 digits raises ValueError (CPython's int-to-str
    limit), and a count past 10**18 is past every limit the service has."""
    if not (text.isascii() and text.isdigit()):
        raise error(f"{field} must be an integer >= {minimum}, got {shown(text)}", {"field": field})
    digits = text.lstrip("0") or "0"  # int() counts leading zeros against its 4300-digit limit too
    if len(digits) > _MAX_DIGITS:
        raise error(f"{field} is too large: an integer of {len(digits)} digits", {"field": field})
    value = int(digits)
    if value < minimum:
        raise error(f"{field} must be an integer >= {minimum}, got {shown(text)}", {"field": field})
    return value


def parse_number(text: str, field: str) -> float:
    """A finite number sent as text, or 422 naming ``field``; at most 64 ASCII characters (float() takes
    any length and Unicode digits; what it makes of a 5000-digit string is inf anyway)."""
    try:
        if not text.isascii() or len(text) > _MAX_NUMBER_CHARS:
            raise ValueError
        value = float(text)
    except ValueError:
        raise InvalidInput(f"{field} must be a number, got {shown(text)}", {"field": field}) from None
    if not math.isfinite(value):
        raise InvalidInput(f"{field} must be finite, got {shown(text)}", {"field": field})
    return value


def as_float(value: int | float, field: str) -> float:
    """A JSON number as a float, or 422 naming ``field``: ``float()`` of an integer past ~1.8e308 (JSON
    allows 4300 digits) raises OverflowError."""
    try:
        return float(value)
    except OverflowError:
        digits = int(value.bit_length() * math.log10(2)) + 1 if isinstance(value, int) else 0
        raise InvalidInput(
            f"{field} is beyond the range of a float: an integer of about {digits} digits", {"field": field}
        ) from None


def load_json(body: bytes, what: str = "request body") -> Any:
    """The reference decoding of a client's JSON body (``json.loads``): any body it cannot turn into clean
    values is a 400 naming why, never an exception from deeper down.

    - Encoding: UTF-8 (with or without a BOM), UTF-16 or UTF-32, as RFC 8259 allows, decoded *strictly*:
      ``json.loads`` on bytes passes UTF-8-encoded surrogates through (``surrogatepass``).
    - Integers of more than 4300 digits: ``json.loads`` raises ValueError (CPython's int-to-str limit).
    - Lone surrogates: ``"\\ud800"`` decodes to a str that cannot be encoded again, so it would fail later
      (encoding the answer, writing SQLite) as a 500. Only a body with an escaped surrogate (a regex over
      the text) is walked; valid pairs (emoji) decode to one code point and pass.
    """
    try:
        text = body.decode(json.detect_encoding(body))
        value = json.loads(text)
    except UnicodeDecodeError as error:
        raise MalformedRequest(f"{what} could not be decoded as JSON ({error.reason})", {"field": "body"}) from None
    except json.JSONDecodeError as error:
        raise MalformedRequest(f"{what} is not valid JSON: {error.msg}", {"field": "body"}) from None
    except RecursionError:
        raise MalformedRequest(f"{what} is not valid JSON: nested too deeply", {"field": "body"}) from None
    except ValueError:  # past the int-to-str limit (the only other ValueError json.loads raises)
        raise MalformedRequest(
            f"{what} has an integer of more than {sys.get_int_max_str_digits()} digits", {"field": "body"}
        ) from None
    if _SURROGATE_ESCAPE.search(text):
        _refuse_lone_surrogates(value, what)
    return value


def refuse_lone_surrogates(body: bytes, what: str = "request body") -> None:
    """400 naming the string if ``body`` is JSON with a lone surrogate, for decoders that refuse those
    with a misleading reason (msgspec: "Input data was truncated"); nothing otherwise."""
    try:
        text = body.decode(json.detect_encoding(body))
        if not _SURROGATE_ESCAPE.search(text):
            return
        value = json.loads(text)
    except (ValueError, RecursionError):
        return  # not JSON for other reasons: the caller's own message says so
    _refuse_lone_surrogates(value, what)


def _refuse_lone_surrogates(value: Any, what: str) -> None:
    """400 naming the first string (or object key) of ``value`` that holds a lone surrogate."""
    # Depth-first, in document order; a node's path is built only for the one reported.
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        node, path = stack.pop()
        found: str | None = None
        if isinstance(node, str):
            found = node if _SURROGATE.search(node) else None
        elif isinstance(node, dict):
            for key in node:
                if _SURROGATE.search(key):
                    found, path = key, (*path, "(a key)")
                    break
            else:
                stack.extend((node[key], (*path, key)) for key in reversed(list(node)))
        elif isinstance(node, list):
            stack.extend((node[i], (*path, i)) for i in range(len(node) - 1, -1, -1))
        if found is not None:
            surrogate = _SURROGATE.search(found)
            code = f"\\u{ord(surrogate.group()):04x}" if surrogate else "a surrogate"
            where = _path_text(path)
            raise MalformedRequest(
                f"{what} has a lone UTF-16 surrogate ({code}) in the string at {where}: JSON strings must be "
                "valid Unicode (surrogates only in pairs)",
                {"field": where},
            )


def _path_text(path: tuple[str | int, ...]) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part == "(a key)":
            text += " (a key)"
        else:
            name = part if len(part) <= 40 else part[:40] + "…"
            text += f".{name}" if text else name
    return text or "body"


# -- cheap structure before any value is built -----------------------------------------------------------

_RAW_OBJECT = msgspec.json.Decoder(dict[str, msgspec.Raw])
_RAW_LIST = msgspec.json.Decoder(list[msgspec.Raw])
_GATE_MAX = 10_000  # larger limits: a plain list of raw elements (a gate struct of 10k fields takes 40 ms to build)


def raw_fields(body: bytes) -> dict[str, msgspec.Raw] | None:
    """The top-level object of a JSON body with its values left undecoded, or None if it is not an object
    msgspec reads (not JSON, NaN literals, UTF-16...: the full decode will say what). One C pass that
    builds no values: ~4 ms per MB."""
    try:
        return _RAW_OBJECT.decode(body)
    except msgspec.DecodeError:
        return None


def requested_model(body: bytes) -> str | None:
    """The request's ``model`` when it is a string, read without decoding the instances (a server of several
    models must know the model before it can decode them with its input type); None otherwise (absent, or
    not a string: the full parse names that problem)."""
    fields = raw_fields(body)
    raw = None if fields is None else fields.get("model")
    if raw is None:
        return None
    try:
        return msgspec.json.decode(raw, type=str)
    except msgspec.DecodeError:
        return None


def is_array(raw: msgspec.Raw) -> bool:
    return memoryview(raw)[:1].tobytes() == b"["


@functools.lru_cache(maxsize=16)
def _at_most(limit: int) -> msgspec.json.Decoder[Any]:
    """A decoder of JSON arrays of at most ``limit`` elements (kept raw), which stops at element
    ``limit + 1`` without reading further: an array-like struct of ``limit`` optional fields that forbids
    more (msgspec checks a list's ``max_length`` only after building the whole list)."""
    fields = [(f"_{i}", msgspec.Raw, msgspec.field(default=msgspec.Raw())) for i in range(limit)]
    gate = msgspec.defstruct(f"AtMost{limit}", fields, array_like=True, forbid_unknown_fields=True)
    return msgspec.json.Decoder(gate)


def raw_items(raw: msgspec.Raw, limit: int) -> list[msgspec.Raw] | None:
    """The elements of the JSON array ``raw`` (``is_array``), undecoded, or None if it has more than
    ``limit``: found at element ``limit + 1`` whatever follows (a few microseconds for 2M elements, where
    decoding them takes 100-600 ms and tens of MB)."""
    if limit > _GATE_MAX:
        items = _RAW_LIST.decode(raw)
        return items if len(items) <= limit else None
    try:
        gate = _at_most(limit).decode(raw)
    except msgspec.ValidationError:
        return None
    return [item for item in msgspec.structs.astuple(gate) if len(item)]  # a JSON value is never empty


def _gate_predict(body: bytes, signature: InputSignature | None, max_instances: int | None) -> None:
    """413 for more than ``max_instances`` instances, 422 for an instance with a list longer than the
    signature's fixed dimension there, found before the body is decoded (the counts in the messages are
    "more than": nobody counted)."""
    fields = raw_fields(body)
    raw = fields.get("instances") if fields is not None else None
    if raw is None or not is_array(raw) or max_instances is None:
        return
    rows = raw_items(raw, max_instances)
    if rows is None:
        raise too_many_instances(f"more than {max_instances}", max_instances)
    if signature is None:
        return
    if signature.is_flat:
        (width,) = signature.instance_shape
        if width == FREE:
            return
        for i, row in enumerate(rows):
            if is_array(row) and raw_items(row, width) is None:
                raise width_error(f"instances[{i}]", f"more than {width}", width)
        return
    for i, row in enumerate(rows):
        problem = gate_nested(row, signature.instance_shape, f"instances[{i}]")
        if problem is not None:
            at, limit = problem
            raise InvalidInput(
                f"{at} has more than {limit} items; the model expects instances of shape {signature.instance_text}",
                {"field": at, "expected": limit},
            )


def gate_nested(raw: msgspec.Raw, shape: Sequence[int], at: str) -> tuple[str, int] | None:
    """The first array in ``raw`` (undecoded JSON) longer than ``shape`` allows at its depth, as (its path,
    the limit), or None; free dimensions (-1) are not limited. Arrays are read raw and stop at the first
    element past the limit (``raw_items``), so a hostile body is refused in microseconds."""
    if not shape or not is_array(raw):
        return None
    limit = shape[0]
    items = raw_items(raw, limit if limit != FREE else _UNLIMITED)
    if items is None:
        return at, limit
    if len(shape) > 1:
        for j, item in enumerate(items):
            problem = gate_nested(item, shape[1:], f"{at}[{j}]")
            if problem is not None:
                return problem
    return None


_UNLIMITED = sys.maxsize


def _few_unknown_keys(value: dict[str, Any], known: Mapping[str, Any]) -> dict[str, Any]:
    """``value`` with at most ``_SUSPECTS`` unknown keys: a strict model reports every one, and a body
    can carry a million."""
    unknown = 0
    for key in value:
        if key not in known:
            unknown += 1
            if unknown > _SUSPECTS:
                break
    else:
        return value
    kept: dict[str, Any] = {}
    unknown = 0
    for key, item in value.items():
        if key in known:
            kept[key] = item
        elif unknown < _SUSPECTS:
            kept[key] = item
            unknown += 1
    return kept


def _validate_bounded(
    model: type[pydantic.BaseModel],
    value: Any,
    field: str,
    plain: Callable[[Any], bool],
    item_model: type[pydantic.BaseModel] | None = None,
    limit: int | None = None,
    too_many: Callable[[int], ServiceError] | None = None,
    trim: Callable[[Any], Any] | None = None,
) -> Any:
    """``model.model_validate(value)``, with element-by-element validation bounded.

    Only the first ``_SUSPECTS`` elements of ``value[field]`` that ``plain`` does not vouch for are
    validated (their indices put back into the errors) when there are more, each with at most
    ``_SUSPECTS`` keys ``item_model`` does not know: a strict model reports every bad element and every
    unknown key, and a body of two million bad ones took 8 s and 500 MB to refuse. ``plain`` only has to
    be conservative: a suspect the model accepts just costs the full validation. ``trim`` cuts a suspect
    down to its first few bad values (an instance with a free dimension has no length limit to refuse it
    by first). More than ``limit`` elements: the first ``limit`` are validated (their errors come first,
    as they always have), then ``too_many(count)`` is raised."""
    index: list[int] | None = None
    over: int | None = None
    trimmed = False
    whole = value
    if isinstance(value, dict):
        value = _few_unknown_keys(value, model.model_fields)
        items = value.get(field)
        if isinstance(items, list) and limit is not None and len(items) > limit:
            over, items = len(items), items[:limit]
            value = {**value, field: items}
        whole = value
        if isinstance(items, list):
            suspects = []
            for i, item in enumerate(items):
                if not plain(item):
                    suspects.append(i)
                    if len(suspects) > _SUSPECTS:
                        break
            if suspects:
                kept = list(items)
                if item_model is not None:
                    for i in suspects:
                        if isinstance(kept[i], dict):
                            kept[i] = _few_unknown_keys(kept[i], item_model.model_fields)
                if trim is not None:
                    for i in suspects:
                        cut = trim(kept[i])
                        trimmed = trimmed or cut is not kept[i]
                        kept[i] = cut
                if len(suspects) > _SUSPECTS:
                    index = suspects[:_SUSPECTS]
                    kept = [kept[i] for i in index]
                value = {**value, field: kept}
    validated, errors = _strict(model, value)
    if errors is None and (index is not None or trimmed):  # valid as trimmed: the suspects were false alarms
        index = None
        validated, errors = _strict(model, whole)
    if errors is not None:
        if index is not None:
            for problem in errors:
                loc = tuple(problem.get("loc", ()))
                if len(loc) >= 2 and loc[0] == field and isinstance(loc[1], int):
                    problem["loc"] = (field, index[loc[1]], *loc[2:])
        raise invalid_request(errors)
    if over is not None and too_many is not None:
        raise too_many(over)
    return validated


def _strict(model: type[pydantic.BaseModel], value: Any) -> tuple[Any, list[Any] | None]:
    """The model, or its errors (FastAPI's validation mode: the same messages)."""
    try:
        return model.model_validate(value, from_attributes=True), None
    except pydantic.ValidationError as error:
        return None, list(error.errors(include_url=False))


@dataclass(frozen=True, slots=True)
class PredictOptions:
    coverage: float | None = None  # None: the model's default level (``InferenceEngine.default_coverage``)
    top_k: int | None = None
    include_logits: bool = False
    model: str | None = None


class _FastPredict(msgspec.Struct, forbid_unknown_fields=True):
    """What ``PredictRequest`` accepts, minus its rarer spellings (those take the slow path)."""

    instances: Annotated[list[list[float] | dict[str, float]], msgspec.Meta(min_length=1)]
    coverage: float | None = None
    top_k: Annotated[int, msgspec.Meta(ge=1)] | None = None
    include_logits: bool = False
    model: str | None = None


_DECODER = msgspec.json.Decoder(_FastPredict)
_ANY = msgspec.json.Decoder()


@functools.lru_cache(maxsize=16)
def _fast_decoder(signature: InputSignature | None) -> msgspec.json.Decoder[Any]:
    """``_FastPredict`` for this input: instances nested to its rank (objects keyed by feature name only for a
    flat input), of floats or of integers as the input is. A flat float input gets ``_FastPredict`` itself."""
    if signature is None or (signature.is_flat and not signature.integral):
        return _DECODER
    element: Any = int if signature.integral else float
    instance: Any
    if signature.is_flat:
        instance = list[element] | dict[str, element]
    else:
        instance = element
        for _ in signature.instance_shape:
            instance = list[instance]
    fields: list[Any] = [
        ("instances", Annotated[list[instance], msgspec.Meta(min_length=1)]),
        ("coverage", float | None, None),
        ("top_k", Annotated[int, msgspec.Meta(ge=1)] | None, None),
        ("include_logits", bool, False),
        ("model", str | None, None),
    ]
    struct = msgspec.defstruct("FastPredictInput", fields, forbid_unknown_fields=True)
    return msgspec.json.Decoder(struct)


def parse_json(
    body: bytes, signature: InputSignature | None = None, max_instances: int | None = None
) -> tuple[PredictOptions, list[Any]]:
    """Options and the instances as decoded (``InputSignature.from_json`` turns them into the input once
    the options are checked).

    ``signature`` types the instances (a flat float input when None); with ``max_instances`` (the route
    passes both) a refused body is refused from its instance count and list lengths before any element is
    validated."""
    try:
        fast = _fast_decoder(signature).decode(body)
        return PredictOptions(fast.coverage, fast.top_k, fast.include_logits, fast.model), fast.instances
    except (msgspec.DecodeError, msgspec.ValidationError):
        request = _slow_parse(body, signature, max_instances)
        options = PredictOptions(request.coverage, request.top_k, request.include_logits, request.model)
        return options, list(request.instances)


def instance_literals(body: bytes) -> list[Any]:
    """The instances of a body ``parse_json`` accepted, with JSON's integers as Python ints (the typed decode
    reads every number of a float input as a float): what ``from_json`` asks for when a value may be an
    integer its float type cannot hold. Only bodies with such large values pay for this second decode."""
    try:
        value = _ANY.decode(body)
    except msgspec.DecodeError:  # UTF-16 or a BOM: the reference decoding reads those
        value = load_json(body)
    instances = value.get("instances") if isinstance(value, dict) else None
    return instances if isinstance(instances, list) else []


def _slow_parse(body: bytes, signature: InputSignature | None, max_instances: int | None) -> PredictRequest:
    """The reference parse (what FastAPI did with the strict model): raises the precise error.

    A body over ``GATE_BYTES`` is refused for too many instances (413) or a list longer than the model's
    input allows (422) before it is decoded. Otherwise such lists are refused first (422), then the strict
    model names bad values in the first ``max_instances`` instances (on at most a few bad ones), and only
    then is the instance count checked (413)."""
    if not body.strip():
        raise MalformedRequest("request body is required: a JSON object with 'instances'", {"field": "body"})
    if len(body) > GATE_BYTES:
        _gate_predict(body, signature, max_instances)
    value = load_json(body)
    if signature is not None and isinstance(value, dict) and isinstance(rows := value.get("instances"), list):
        check_instance_widths(rows if max_instances is None else rows[:max_instances], signature)
    model = request_model(signature) if signature is not None else PredictRequest
    plain: Callable[[Any], bool] = _plain_row
    trim: Callable[[Any], Any] | None = None
    if signature is not None and (signature.integral or not signature.is_flat):
        plain = functools.partial(_plain_instance, depth=len(signature.instance_shape), integral=signature.integral)
        trim = functools.partial(_trimmed, depth=len(signature.instance_shape), integral=signature.integral)
    request: PredictRequest = _validate_bounded(
        model,
        value,
        "instances",
        plain,
        limit=max_instances,
        too_many=lambda count: too_many_instances(str(count), max_instances or 0),
        trim=trim,
    )
    return request


def _plain_row(row: Any) -> bool:
    """A row the strict model surely accepts: a list or object of finite floats and ints (not bools)."""
    values: Iterable[Any]
    if isinstance(row, dict):
        values = row.values()
    elif isinstance(row, list):
        values = row
    else:
        return False
    return all((type(v) is float and v - v == 0.0) or (type(v) is int and -_FLOAT_MAX < v < _FLOAT_MAX) for v in values)


def _plain_number(value: Any, integral: bool) -> bool:
    """A number the strict model surely accepts: for an integer input an int or a whole float, else a finite
    float or an int in float range (never a bool: ``type`` is exact)."""
    if type(value) is int:
        return integral or -_FLOAT_MAX < value < _FLOAT_MAX
    return type(value) is float and value - value == 0.0 and (not integral or value.is_integer())


def _plain_instance(instance: Any, depth: int, integral: bool) -> bool:
    """An instance the strict model surely accepts: lists nested ``depth`` deep (or, flat, an object) of plain
    numbers."""
    if depth == 1 and isinstance(instance, dict):
        return all(_plain_number(v, integral) for v in instance.values())
    if not isinstance(instance, list):
        return False
    if depth == 1:
        return all(_plain_number(v, integral) for v in instance)
    return all(_plain_instance(item, depth - 1, integral) for item in instance)


def _trimmed(instance: Any, depth: int, integral: bool) -> Any:
    """``instance`` cut just after its ``_SUSPECTS``-th bad value (in document order), or ``instance`` itself
    if it has fewer: the strict model then reports a few problems at their true indices, however many the
    instance holds (lengths are checked after validation, so cutting a list changes no message)."""
    budget = [_SUSPECTS]

    def cut(node: Any, depth: int) -> Any:
        if depth == 0 or not isinstance(node, list):
            if depth != 0 or not _plain_number(node, integral):
                budget[0] -= 1
            return node
        kept = []
        for item in node:
            kept.append(cut(item, depth - 1))
            if budget[0] <= 0:
                break
        return kept

    if isinstance(instance, dict):
        return instance
    result = cut(instance, depth)
    return result if budget[0] <= 0 else instance


def parse_feedback(body: bytes, max_items: int) -> FeedbackRequest:
    """A /v1/feedback body, as strictly as FastAPI validated ``FeedbackRequest`` (bad items named first,
    then the count), but with only a few bad items validated one by one, and a body over ``GATE_BYTES``
    refused for its item count (413) before it is decoded."""
    if not body.strip():
        raise MalformedRequest("request body is required: a JSON object with 'feedback'", {"field": "body"})
    if len(body) > GATE_BYTES:
        fields = raw_fields(body)
        raw = fields.get("feedback") if fields is not None else None
        if raw is not None and is_array(raw) and raw_items(raw, max_items) is None:
            raise _too_many_feedback_items(f"more than {max_items}", max_items)
    value = load_json(body)
    request: FeedbackRequest = _validate_bounded(
        FeedbackRequest,
        value,
        "feedback",
        _plain_feedback_item,
        FeedbackItem,
        limit=max_items,
        too_many=lambda count: _too_many_feedback_items(str(count), max_items),
    )
    return request


def _too_many_feedback_items(count: str, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"{count} feedback items exceed the limit of {limit} (CALIBSERVE_MAX_FEEDBACK_ITEMS)",
        {"field": "feedback", "limit": limit},
    )


def _plain_feedback_item(item: Any) -> bool:
    """An item the strict model surely accepts (suspects are validated one by one, unknown keys trimmed)."""
    if type(item) is not dict or len(item) != len(FeedbackItem.model_fields):
        return False
    prediction_id, label = item.get("prediction_id"), item.get("label")
    return type(prediction_id) is str and 1 <= len(prediction_id) <= 64 and type(label) is str


def parse_npy(
    body: bytes, query: dict[str, str], signature: InputSignature, max_instances: int
) -> tuple[PredictOptions, NDArray[Any]]:
    """An ``.npy`` body (no pickles) of shape ``[N, *instance]``, as the input's dtype by the one conversion
    rule (``InputSignature.convert``); options from the query string, checked as strictly."""
    options = _query_options(query)
    if not body:
        raise MalformedRequest(
            f"request body is required: an .npy file of shape {signature.shape_text}", {"field": "body"}
        )
    array = _read_npy(body, signature, max_instances)
    return options, signature.convert(array, "instances")


NPY_MAGIC = b"\x93NUMPY"
NPY_MAX_HEADER = 10_000  # numpy's own default (max_header_size): a real [N, F] header is ~100 bytes
# Version -> (struct format of the header length, numpy's reader of that version's header).
_NPY_VERSIONS = {
    (1, 0): ("<H", np.lib.format.read_array_header_1_0),
    (2, 0): ("<I", np.lib.format.read_array_header_2_0),
}


def _read_npy(body: bytes, signature: InputSignature, max_instances: int) -> NDArray[Any]:
    """The ``[N, *instance]`` array of an ``.npy`` body, read in place from the bytes after its header.

    Shape, dtype and size are checked from the header first: ``np.load`` would allocate whatever the
    header declares (a 200-byte body can declare a terabyte), and the data must be exactly as long as
    the header says. Object dtypes (pickles) are refused, never loaded. Every refusal is in our words:
    numpy's messages advise ``allow_pickle=True``, which a client of this service must never be told."""
    if body.startswith(b"PK\x03\x04"):
        raise MalformedRequest("request body is an .npz archive; send a single .npy array", {"field": "body"})
    if not body.startswith(NPY_MAGIC):
        raise MalformedRequest(
            "request body is not an .npy file (it does not start with \\x93NUMPY)", {"field": "body"}
        )
    if len(body) < len(NPY_MAGIC) + 2:
        raise MalformedRequest("request body is not a valid .npy file: it ends inside its header", {"field": "body"})
    version = (body[6], body[7])
    if version not in _NPY_VERSIONS:
        raise MalformedRequest(
            f"request body is an .npy file of format version {version[0]}.{version[1]}; versions 1.0 and 2.0 are read",
            {"field": "body"},
        )
    length_format, read_header = _NPY_VERSIONS[version]
    if len(body) < 8 + struct.calcsize(length_format):
        raise MalformedRequest("request body is not a valid .npy file: it ends inside its header", {"field": "body"})
    (header_length,) = struct.unpack_from(length_format, body, 8)
    if header_length > NPY_MAX_HEADER:
        raise MalformedRequest(
            f"request body is not a valid .npy file: its header is {header_length} bytes, more than the "
            f"{NPY_MAX_HEADER} accepted",
            {"field": "body"},
        )
    stream = io.BytesIO(body)
    stream.seek(8)
    try:
        shape, fortran_order, dtype = read_header(stream, max_header_size=NPY_MAX_HEADER)
    except Exception:  # numpy parses the header with ast.literal_eval and tokenize: ValueError,
        # SyntaxError, TokenError, RecursionError, MemoryError... on hostile bytes. Every one means the same.
        raise MalformedRequest(
            "request body is not a valid .npy file: its header is not the dictionary of descr, fortran_order "
            "and shape that numpy.save writes",
            {"field": "body"},
        ) from None
    if dtype.hasobject:
        raise MalformedRequest("request body is an .npy of Python objects (a pickle); send numbers", {"field": "body"})
    if not all(type(dim) is int and dim >= 0 for dim in shape):  # numpy lets bools and negatives through
        raise MalformedRequest(
            f"request body is not a valid .npy file: its shape {shown(shape)} is not a tuple of sizes >= 0",
            {"field": "body"},
        )
    if len(shape) >= 1:
        check_instance_count(shape[0], max_instances)
    if dtype.kind not in "fiu" or dtype.itemsize > 8:
        raise InvalidInput(
            f"features must be {NPY_DTYPES}, got dtype {dtype} (the model's input is {signature.dtype.name})",
            {"field": "body", "dtype": str(dtype)},
        )
    count = math.prod(shape)  # Python ints: np.prod would overflow int64 on a hostile shape
    expected = count * dtype.itemsize
    data = len(body) - stream.tell()
    if data != expected:
        raise MalformedRequest(
            f"request body is not a valid .npy file: the header declares {shown(list(shape))} {dtype} "
            f"({expected} bytes of data), the body carries {data}",
            {"field": "body"},
        )
    signature.check_batch_shape(shape, "features", "body")
    flat = np.frombuffer(body, dtype=dtype, count=count, offset=stream.tell())
    return flat.reshape(shape, order="F" if fortran_order else "C")


def _query_options(query: dict[str, str]) -> PredictOptions:
    unknown = sorted(set(query) - set(_QUERY_OPTIONS))
    if unknown:
        raise InvalidInput(
            f"unknown query parameter(s) {', '.join(name[:40] for name in unknown[:5])}; allowed: "
            f"{', '.join(_QUERY_OPTIONS)}",
            {"field": "query", "unknown": unknown[:50]},
        )
    coverage = parse_number(query["coverage"], "coverage") if "coverage" in query else None
    top_k = parse_count(query["top_k"], "top_k", minimum=1) if "top_k" in query else None
    flag = query.get("include_logits", "false").lower()
    if flag not in ("true", "false"):
        raise InvalidInput(f"include_logits must be true or false, got {shown(flag)}", {"field": "include_logits"})
    return PredictOptions(coverage, top_k, flag == "true", query.get("model"))
