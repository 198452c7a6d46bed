"""Open Inference Protocol (KServe V2) codec: infer request bytes -> features, predictions -> response bytes.

Pure translation, no HTTP framework: the /v2 routes hand it bodies and headers, the shared predictor does
the work. Both the JSON form and the binary tensor data extension are handled: with an
``Inference-Header-Content-Length`` header the body is that many bytes of JSON followed by the raw tensors
(little-endian, row-major; BYTES elements as a 4-byte length and the bytes), in the order of the inputs
that declare ``binary_data_size``. References: the KServe "Open Inference Protocol" REST specification and
its "Binary Tensor Data Extension" (the same documents Triton and MLServer implement).
"""

from __future__ import annotations

import functools
import math
import struct
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
from numpy.typing import NDArray

from service import __version__
from service.api.parsing import (
    OFF_LOOP_BYTES,
    as_float,
    gate_nested,
    is_array,
    parse_count,
    raw_items,
    refuse_lone_surrogates,
    shown,
)
from service.card import LOGITS_OUTPUT, PROBABILITIES_OUTPUT
from service.errors import InvalidInput, MalformedRequest
from service.inference.engine import BatchPrediction, InferenceEngine
from service.inference.inputs import InputSignature, check_instance_count, short_number, to_dtype
from service.inference.rows import RowValues, prediction_sets

PLATFORM = "onnx_onnxv1"
HEADER_LENGTH = "inference-header-content-length"
EXTENSIONS = ("binary_tensor_data", "model_repository")
# Tensor datatypes accepted for the input (whatever its own type: values are converted exactly, see
# service.inference.inputs), as little-endian numpy dtypes.
INPUT_DTYPES = {
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
}
# Outputs a request may ask for: name -> (datatype, per-row shape is [K] (True) or scalar (False)).
OUTPUTS: dict[str, tuple[str, bool]] = {
    PROBABILITIES_OUTPUT: ("FP32", True),
    LOGITS_OUTPUT: ("FP32", True),
    "label": ("BYTES", False),
    "confidence": ("FP32", False),
    "prediction_set": ("BYTES", False),
    "expected_accuracy": ("FP32", False),
    "prediction_id": ("BYTES", False),
}
# The protocol's name for each input dtype a card can declare (model metadata).
DATATYPE_OF = {np.dtype(code).name: datatype for datatype, code in INPUT_DTYPES.items()}
DEFAULT_OUTPUTS = (PROBABILITIES_OUTPUT, "label", "confidence")
PREDICTION_SET_SEPARATOR = ","


class _Input(msgspec.Struct):
    name: str
    shape: list[int]
    datatype: str
    data: msgspec.Raw = msgspec.Raw()  # absent: empty (msgspec cannot put Raw in a union)
    parameters: dict[str, Any] | None = None


class _Output(msgspec.Struct):
    name: str
    parameters: dict[str, Any] | None = None


class _Header(msgspec.Struct):
    inputs: list[_Input]
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[_Output] | None = None


_HEADER = msgspec.json.Decoder(_Header)


@functools.lru_cache(maxsize=16)
def _data_decoders(rank: int, integral: bool) -> tuple[msgspec.json.Decoder[Any], msgspec.json.Decoder[Any]]:
    """Decoders of a tensor's JSON data: flat, and nested to the tensor's rank (rows of a matrix, or
    ``[N][1][8][8]``), of integers or of numbers."""
    element: Any = int if integral else float
    nested: Any = element
    for _ in range(rank):
        nested = list[nested]
    return msgspec.json.Decoder(list[element]), msgspec.json.Decoder(nested)


@dataclass(frozen=True, slots=True)
class InferRequest:
    id: str | None
    features: NDArray[Any]  # the model's input, [N, *instance] of its declared dtype
    outputs: tuple[tuple[str, bool], ...]  # (name, as binary)
    coverage: float | None  # calibserve's extension parameter; None: the card's default level


# -- requests ------------------------------------------------------------------------------------------


def parse_infer(body: bytes, header_length: str | None, signature: InputSignature, max_instances: int) -> InferRequest:
    json_part, binary = _split(body, header_length)
    try:
        header = _HEADER.decode(json_part)
    except msgspec.ValidationError as error:
        raise MalformedRequest(f"invalid inference request: {error}", {"field": "body"}) from None
    except msgspec.DecodeError as error:
        refuse_lone_surrogates(json_part, "inference request")  # msgspec calls that "Input data was truncated"
        raise MalformedRequest(f"inference request is not valid JSON: {error}", {"field": "body"}) from None
    parameters = header.parameters or {}
    features = _features(header.inputs, binary, signature, max_instances)
    return InferRequest(header.id, features, _requested_outputs(header.outputs, parameters), _coverage(parameters))


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if not body:
        raise MalformedRequest("request body is required: an inference request", {"field": "body"})
    if header_length is None:
        return body, b""
    length = parse_count(header_length.strip(), "Inference-Header-Content-Length", error=MalformedRequest)
    if length > len(body):
        raise MalformedRequest(
            f"Inference-Header-Content-Length is {length}, but the body has only {len(body)} bytes",
            {"field": "Inference-Header-Content-Length"},
        )
    return body[:length], body[length:]


def _features(inputs: list[_Input], binary: bytes, signature: InputSignature, max_instances: int) -> NDArray[Any]:
    """The one input tensor, as the model's declared dtype and shape: its values are read as the datatype the
    request declares (refused where that type cannot hold them: UINT8 300), then converted to the model's
    type by the rule every path follows (``InputSignature.convert``: exact, or refused)."""
    input_name = signature.name
    names = [tensor.name for tensor in inputs]
    if names != [input_name]:
        unknown = sorted(set(names) - {input_name})
        problem = f"unknown input(s) {', '.join(map(shown, unknown[:5]))}" if unknown else f"inputs {shown(names)}"
        raise InvalidInput(
            f"{problem}: this model takes exactly one input, {input_name!r} "
            f"{DATATYPE_OF[signature.dtype.name]} {list(signature.shape)}"
        )
    tensor = inputs[0]
    dtype = _input_dtype(tensor.datatype, signature)
    signature.check_batch_shape(tensor.shape, f"input {input_name!r}", "shape")
    check_instance_count(tensor.shape[0], max_instances)
    count = math.prod(tensor.shape)
    values = _binary_values(tensor, binary, dtype, count) if _binary_size(tensor) is not None else None
    if values is None:
        if binary:
            raise MalformedRequest(f"{len(binary)} bytes of binary data follow the JSON, but no input declares them")
        values = _json_values(tensor, dtype, count)
    return signature.convert(values, input_name, as_float="FP32 or FP64")


def _input_dtype(datatype: str, signature: InputSignature) -> np.dtype[Any]:
    if datatype not in INPUT_DTYPES:
        raise InvalidInput(
            f"datatype {shown(datatype)} is not accepted for input {signature.name!r}; use one of "
            f"{', '.join(INPUT_DTYPES)} (the model's own is {DATATYPE_OF[signature.dtype.name]})",
            {"field": "datatype"},
        )
    return np.dtype(INPUT_DTYPES[datatype])


def _binary_size(tensor: _Input) -> int | None:
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise MalformedRequest(
            f"binary_data_size of input {shown(tensor.name)} must be a byte count, got {shown(size)}"
        )
    return size


def _binary_values(tensor: _Input, binary: bytes, dtype: np.dtype[Any], count: int) -> NDArray[Any]:
    size = _binary_size(tensor)
    expected = count * dtype.itemsize
    if size != expected:
        raise InvalidInput(
            f"input {tensor.name!r} declares binary_data_size {size}, but shape {tensor.shape} of "
            f"{tensor.datatype} takes {expected} bytes"
        )
    if len(tensor.data):
        raise MalformedRequest(f"input {tensor.name!r} has both binary_data_size and data; send one")
    if len(binary) != expected:
        raise MalformedRequest(
            f"the body carries {len(binary)} bytes after the JSON, but the inputs declare {expected}",
            {"field": "body"},
        )
    return np.frombuffer(binary, dtype=dtype, count=count).reshape(tensor.shape)


def _json_values(tensor: _Input, dtype: np.dtype[Any], count: int) -> NDArray[Any]:
    """The tensor's JSON data, flat or nested to its rank (row-major), as the declared datatype."""
    if not len(tensor.data):
        raise InvalidInput(f"input {tensor.name!r} has neither data nor binary_data_size")
    if len(tensor.data) > OFF_LOOP_BYTES:
        _gate_values(tensor, count)
    integral = dtype.kind in "iu"
    kind = "integers" if integral else "numbers"
    for decoder in _data_decoders(len(tensor.shape), integral):
        try:
            rows = decoder.decode(tensor.data)
        except msgspec.ValidationError:
            continue
        try:
            values = np.asarray(rows, dtype=_container(dtype)).ravel()
        except OverflowError:  # integers beyond the 64-bit container: UINT64 -1, INT64 2**63, any 2**64
            _refuse_out_of_range(rows, dtype, tensor)
            break
        except ValueError:
            break  # ragged rows
        if len(values) != count:
            raise InvalidInput(
                f"input {tensor.name!r} has {len(values)} values, but shape {tensor.shape} needs {count}",
                {"field": "data"},
            )
        label = f"{tensor.datatype} ({dtype.name})"
        return to_dtype(values.reshape(tensor.shape), dtype, tensor.name, label=label, as_float="FP32 or FP64")
    nesting = "row-nested" if len(tensor.shape) == 2 else f"nested {len(tensor.shape)} deep"
    raise InvalidInput(
        f"input {tensor.name!r} data must be {kind} ({tensor.datatype}) in a flat or {nesting} list, row-major",
        {"field": "data"},
    )


def _gate_values(tensor: _Input, count: int) -> None:
    """More values than the shape needs, flat or in a row (or deeper), refused before any is decoded
    (``raw_items``: a row of two million numbers costs microseconds to refuse instead of 100+ ms and 50 MB)."""
    if not is_array(tensor.data):
        return
    items = raw_items(tensor.data, count)
    rows = tensor.shape[0]
    width = count // rows if rows else 0
    if items is None:
        problem = f"has more than {count} values"
    elif items and is_array(items[0]) and len(items) > rows:  # nested
        problem = f"has {len(items)} rows"
    elif items and is_array(items[0]):
        inner = tensor.shape[1:]
        wide = ((i, gate_nested(row, inner, f"row {i}")) for i, row in enumerate(items))
        found = next((where for _, where in wide if where is not None), None)
        if found is None:
            return
        at, limit = found
        what = "values" if len(inner) == 1 else "items in a list"
        problem = f"{at} has more than {limit} {what}"
    else:
        return
    raise InvalidInput(
        f"input {tensor.name!r} {problem}, but shape {tensor.shape} needs {count} in {rows} rows of {width}",
        {"field": "data"},
    )


def _container(dtype: np.dtype[Any]) -> type[np.generic]:
    """The 64-bit type JSON values are read into before ``_as_declared`` checks them against ``dtype``:
    unsigned types need uint64 (UINT64 2**63 is a valid value, and the same tensor in binary is accepted),
    signed ones int64, floats float64."""
    return np.uint64 if dtype.kind == "u" else np.int64 if dtype.kind == "i" else np.float64


def _refuse_out_of_range(rows: list[Any], dtype: np.dtype[Any], tensor: _Input) -> None:
    """422 naming the first integer of ``rows`` (flat or nested) outside ``dtype``, as ``to_dtype`` words it."""
    info = np.iinfo(dtype)
    for position, value in enumerate(_flattened(rows)):
        if not info.min <= value <= info.max:
            at = tensor.name + "".join(f"[{i}]" for i in _unravel(position, tensor.shape))
            raise InvalidInput(
                f"{at} = {short_number(value)} is outside the range of {tensor.datatype} ({dtype.name}) "
                f"({info.min}..{info.max})",
                {"field": at},
            )


def _flattened(rows: list[Any]) -> Any:
    for item in rows:
        if isinstance(item, list):
            yield from _flattened(item)
        else:
            yield item


def _unravel(position: int, shape: list[int]) -> list[int]:
    """Row-major index of the ``position``-th value of ``shape`` (Python ints: the shape passed its checks,
    but ``np.unravel_index`` wants it in intp)."""
    index = []
    for dim in reversed(shape[1:]):
        position, i = divmod(position, dim)
        index.append(i)
    return [position, *reversed(index)]


def _requested_outputs(outputs: list[_Output] | None, parameters: dict[str, Any]) -> tuple[tuple[str, bool], ...]:
    all_binary = _flag(parameters, "binary_data_output")
    if not outputs:
        return tuple((name, all_binary) for name in DEFAULT_OUTPUTS)
    unknown = [output.name for output in outputs if output.name not in OUTPUTS]
    if unknown:
        raise InvalidInput(
            f"unknown output(s) {', '.join(map(shown, unknown[:5]))}; this model has {', '.join(OUTPUTS)}",
            {"field": "outputs"},
        )
    requested = []
    for output in outputs:
        own = output.parameters or {}
        binary = _flag(own, "binary_data") if "binary_data" in own else all_binary
        requested.append((output.name, binary))
    return tuple(requested)


def _flag(parameters: dict[str, Any], name: str) -> bool:
    value = parameters.get(name, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"parameter {name!r} must be true or false, got {shown(value)}", {"field": name})
    return value


def _coverage(parameters: dict[str, Any]) -> float | None:
    value = parameters.get("coverage")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"parameter 'coverage' must be a number, got {shown(value)}", {"field": "coverage"})
    return as_float(value, "parameter 'coverage'")


# -- responses -----------------------------------------------------------------------------------------


def server_metadata() -> dict[str, Any]:
    return {"name": "calibserve", "version": __version__, "extensions": list(EXTENSIONS)}


def model_metadata(engine: InferenceEngine) -> dict[str, Any]:
    """The model as the protocol describes it: the input's true name, datatype and shape (-1: any size, the
    batch first), and the outputs every request may ask for."""
    card = engine.card
    signature = engine.signature
    return {
        "name": engine.name,
        "versions": [card.version],
        "platform": PLATFORM,
        "inputs": [
            {"name": signature.name, "datatype": DATATYPE_OF[signature.dtype.name], "shape": list(signature.shape)}
        ],
        "outputs": [
            {"name": name, "datatype": datatype, "shape": [-1, card.n_classes] if per_class else [-1]}
            for name, (datatype, per_class) in OUTPUTS.items()
        ],
    }


def calibration_parameters(engine: InferenceEngine, coverage: float) -> dict[str, Any]:
    """The trust metadata of every answer (the engine's trust summary for this level) as scalar parameters."""
    summary = engine.summaries[coverage]
    parameters: dict[str, Any] = {
        "model_version": summary.version,
        "temperature": summary.temperature,
        "ece": summary.ece.value,
        "ece_lower": summary.ece.lower,
        "ece_upper": summary.ece.upper,
        "ece_n": summary.ece.n,
        "ece_noise_floor": summary.ece_noise_floor,
        "coverage": summary.coverage,
        # The nominal coverage holds on average over calibration sets; for this card (Beta law, Vovk 2012):
        "coverage_p_below_nominal": summary.conformal.p_below_nominal,
        "coverage_quantile_05": summary.conformal.quantile,
        "conformal_guarantee": summary.guarantee,
        "abstain_threshold": summary.abstain_threshold,
    }
    if summary.label_smoothing is not None:  # a parameter is a scalar: an unknown smoothing is left out
        parameters["label_smoothing"] = summary.label_smoothing
    return parameters


def encode_infer_response(
    engine: InferenceEngine,
    request: InferRequest,
    prediction: BatchPrediction,
    ids: list[str],
    coverage: float,
    values: RowValues | None = None,
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary tensors follow it (``values``: the rows'
    Python values when made with the micro-batch's, as ``Scored.values``)."""
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, binary in request.outputs:
        datatype, _ = OUTPUTS[name]
        data = _output_values(engine, name, prediction, ids, values)
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(np.shape(data))}
        if binary:
            raw = _bytes_tensor(data) if datatype == "BYTES" else np.ascontiguousarray(data, "<f4").tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = data if datatype == "BYTES" else data.ravel().tolist()
        outputs.append(tensor)
    response: dict[str, Any] = {"model_name": engine.name, "model_version": engine.card.version}
    if request.id is not None:
        response["id"] = request.id
    response["parameters"] = calibration_parameters(engine, coverage)
    response["outputs"] = outputs
    header = msgspec.json.encode(response)
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)


def _output_values(
    engine: InferenceEngine, name: str, prediction: BatchPrediction, ids: list[str], values: RowValues | None
) -> Any:
    if name == PROBABILITIES_OUTPUT:
        return prediction.probabilities.astype(np.float32)
    if name == LOGITS_OUTPUT:
        return prediction.logits.astype(np.float32)
    if name == "confidence":
        return prediction.confidence.astype(np.float32)
    if name == "expected_accuracy":
        return prediction.expected_accuracy[:, 0].astype(np.float32)
    classes: list[str] = list(engine.card.classes)
    if name == "label":
        return [classes[index] for index in prediction.class_index.tolist()]
    if name == "prediction_set":
        members = values.prediction_set if values is not None else prediction_sets(prediction.prediction_set)
        return [PREDICTION_SET_SEPARATOR.join(classes[j] for j in row) for row in members]
    return list(ids)  # prediction_id


def _bytes_tensor(values: list[str]) -> bytes:
    """BYTES elements, each a 4-byte little-endian length and the UTF-8 bytes (binary extension)."""
    parts = []
    for value in values:
        encoded = value.encode()
        parts.append(struct.pack("<I", len(encoded)))
        parts.append(encoded)
    return b"".join(parts)
