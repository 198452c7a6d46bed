"""Request bodies -> (options, float32 feature matrix), fast where the body is well formed.

JSON: msgspec decodes a well-formed body straight into typed lists in one C pass (it refuses booleans,
strings, null, NaN and unknown keys where pydantic's strict model does), and numpy stacks the rows. A
body msgspec refuses is decoded again the slow way, ``json.loads`` plus the strict pydantic
``PredictRequest``, only to produce the precise error message: so every refusal reads as it always
has, and a valid body never pays for pydantic's element-by-element validation.

Binary: ``application/x-npy`` carries the [N, F] feature matrix as a NumPy ``.npy`` file, with the
options in the query string, for bulk scoring without JSON floats.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import numpy as np
import pydantic
from numpy.typing import NDArray

from service.api.errors import invalid_request
from service.api.schemas import PredictRequest
from service.errors import InvalidInput, MalformedRequest, PayloadTooLarge
from service.inference.features import as_float32

NPY_MEDIA_TYPE = "application/x-npy"
NPY_DTYPES = "a float (float16, float32, float64) or an integer type"
_QUERY_OPTIONS = ("coverage", "top_k", "include_logits", "model")


@dataclass(frozen=True, slots=True)
class PredictOptions:
    coverage: float = 0.9
    top_k: int | None = None
    include_logits: bool = False
    model: str | None = None


class _FastPredict(msgspec.Struct, forbid_unknown_fields=True):
    """What ``PredictRequest`` accepts, minus its rarer spellings (those take the slow path)."""

    instances: Annotated[list[list[float] | dict[str, float]], msgspec.Meta(min_length=1)]
    coverage: float = 0.9
    top_k: Annotated[int, msgspec.Meta(ge=1)] | None = None
    include_logits: bool = False
    model: str | None = None


_DECODER = msgspec.json.Decoder(_FastPredict)


def parse_json(body: bytes) -> tuple[PredictOptions, list[Any]]:
    """Options and raw rows (``rows_to_matrix`` turns them into the matrix once the options are checked)."""
    try:
        fast = _DECODER.decode(body)
        return PredictOptions(fast.coverage, fast.top_k, fast.include_logits, fast.model), fast.instances
    except (msgspec.DecodeError, msgspec.ValidationError):
        request = _slow_parse(body)
        options = PredictOptions(request.coverage, request.top_k, request.include_logits, request.model)
        return options, list(request.instances)


def _slow_parse(body: bytes) -> PredictRequest:
    """The reference parse (what FastAPI did with the strict model): raises the precise error."""
    if not body.strip():
        raise MalformedRequest("request body is required: a JSON object with 'instances'", {"field": "body"})
    try:
        value = json.loads(body)  # bytes: UTF-8 (with or without a BOM), UTF-16 and UTF-32, as RFC 8259 allows
    except UnicodeDecodeError as error:
        raise MalformedRequest(
            f"request body could not be decoded as JSON ({error.reason})", {"field": "body"}
        ) from None
    except json.JSONDecodeError as error:
        raise MalformedRequest(f"request body is not valid JSON: {error.msg}", {"field": "body"}) from None
    except RecursionError:
        raise MalformedRequest("request body is not valid JSON: nested too deeply", {"field": "body"}) from None
    try:
        return PredictRequest.model_validate(value, from_attributes=True)  # FastAPI's mode: same messages
    except pydantic.ValidationError as error:
        raise invalid_request(error.errors(include_url=False)) from None


def check_instance_count(count: int, max_instances: int) -> None:
    if count > max_instances:
        raise PayloadTooLarge(
            f"{count} instances exceed the limit of {max_instances} per request (CALIBSERVE_MAX_INSTANCES)",
            {"field": "instances", "limit": max_instances},
        )


def parse_npy(
    body: bytes, query: dict[str, str], n_features: int, feature_names: Sequence[str] | None, max_instances: int
) -> tuple[PredictOptions, NDArray[np.float32]]:
    """An ``.npy`` body (no pickles) of shape [N, F]; options from the query string, checked as strictly."""
    options = _query_options(query)
    if not body:
        raise MalformedRequest("request body is required: an .npy file of shape [N, F]", {"field": "body"})
    matrix = _read_npy(body, max_instances)
    if matrix.ndim != 2 or matrix.shape[1] != n_features or matrix.shape[0] == 0:
        raise InvalidInput(
            f"features must have shape [N, {n_features}] with N >= 1, got {list(matrix.shape)}",
            {"field": "body", "shape": list(matrix.shape), "expected": [-1, n_features]},
        )
    return options, as_float32(np.asarray(matrix, dtype=np.float64), feature_names)


def _read_npy(body: bytes, max_instances: int) -> NDArray[Any]:
    """The array of an ``.npy`` body, read in place from the bytes after its header.

    Shape, dtype and size are checked from the header first: ``np.load`` would allocate whatever the
    header declares (a 200-byte body can declare a terabyte), and the data must be exactly as long as
    the header says. Object dtypes (pickles) are refused, never loaded."""
    if body.startswith(b"PK\x03\x04"):
        raise MalformedRequest("request body is an .npz archive; send a single .npy array", {"field": "body"})
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except ValueError as error:
        raise MalformedRequest(f"request body is not a valid .npy file: {error}", {"field": "body"}) from None
    if dtype.hasobject:
        raise MalformedRequest("request body is an .npy of Python objects (a pickle); send numbers", {"field": "body"})
    if len(shape) >= 1:
        check_instance_count(int(shape[0]), max_instances)
    if dtype.kind not in "fiu" or dtype.itemsize > 8:
        raise InvalidInput(f"features must be {NPY_DTYPES}, got dtype {dtype}", {"field": "body", "dtype": str(dtype)})
    count = int(np.prod(shape, dtype=np.int64))
    expected = count * dtype.itemsize
    if len(body) - stream.tell() != expected:
        raise MalformedRequest(
            f"request body is not a valid .npy file: the header declares {list(shape)} {dtype} ({expected} bytes of "
            f"data), the body carries {len(body) - stream.tell()}",
            {"field": "body"},
        )
    flat = np.frombuffer(body, dtype=dtype, count=count, offset=stream.tell())
    return flat.reshape(shape, order="F" if fortran_order else "C")


def _query_options(query: dict[str, str]) -> PredictOptions:
    unknown = sorted(set(query) - set(_QUERY_OPTIONS))
    if unknown:
        raise InvalidInput(
            f"unknown query parameter(s) {', '.join(unknown)}; allowed: {', '.join(_QUERY_OPTIONS)}",
            {"field": "query", "unknown": unknown},
        )
    try:
        coverage = float(query.get("coverage", "0.9"))
    except ValueError:
        raise InvalidInput(f"coverage must be a number, got {query['coverage']!r}", {"field": "coverage"}) from None
    if not np.isfinite(coverage):
        raise InvalidInput(f"coverage must be finite, got {query['coverage']!r}", {"field": "coverage"})
    top_k: int | None = None
    if "top_k" in query:
        if not (query["top_k"].isascii() and query["top_k"].isdigit()) or int(query["top_k"]) < 1:
            raise InvalidInput(f"top_k must be an integer >= 1, got {query['top_k']!r}", {"field": "top_k"})
        top_k = int(query["top_k"])
    flag = query.get("include_logits", "false").lower()
    if flag not in ("true", "false"):
        raise InvalidInput(f"include_logits must be true or false, got {flag!r}", {"field": "include_logits"})
    return PredictOptions(coverage, top_k, flag == "true", query.get("model"))
