"""Two edits of a calibserve artifact at the protobuf wire level, without the ``onnx`` package: a new temperature
in place, and a new card in ``metadata_props``.

Why by hand: the server recalibrates a model it serves (``service/recalibration.py``) and must not grow the
``onnx`` package (and its ~55 MB) for it. Every calibserve artifact ends ``Mul(logits, s) -> Softmax ->
probabilities`` with ``s = 1/T`` a float32 scalar initializer (the trainer's ``inverse_temperature``, or
``calibserve_inverse_temperature`` from ``calibrate``); replacing those four bytes keeps every length in the
file, so the rest of the protobuf is untouched and the new graph is the old one with only the temperature
changed. The version digest (``card.model_digest``) is recomputed on the result.

Wire format (protobuf): ModelProto.graph = 7, metadata_props = 14; GraphProto.node = 1, initializer = 5;
NodeProto.input = 1, output = 2, op_type = 4; TensorProto.dims = 1, data_type = 2, float_data = 4,
name = 8, raw_data = 9; StringStringEntryProto.key = 1, value = 2.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from service.card import CARD_METADATA_KEY, PROBABILITIES_OUTPUT, _read_varint, _top_level_fields
from service.errors import ArtifactError

FLOAT = 1  # TensorProto.DataType.FLOAT


@dataclass
class _Node:
    op_type: str = ""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


@dataclass
class _Scalar:
    name: str = ""
    dims: list[int] = field(default_factory=list)
    data_type: int = 0
    value_at: int | None = None  # absolute offset of the float32's 4 bytes


def _fields(data: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """(field, wire type, value start, value end) of a message at data[start:end], offsets absolute."""
    out = []
    for number, span_start, span_end in _top_level_fields(data[start:end]):
        key, pos = _read_varint(data, start + span_start)
        wire_type = key & 0x7
        if wire_type == 2:
            _, pos = _read_varint(data, pos)
        out.append((number, wire_type, pos, start + span_end))
    return out


def _string(data: bytes, start: int, end: int) -> str:
    return data[start:end].decode("utf-8", errors="replace")


def _graph_span(model: bytes) -> tuple[int, int]:
    for number, wire_type, start, end in _fields(model, 0, len(model)):
        if number == 7 and wire_type == 2:
            return start, end
    raise ArtifactError("the model has no graph")


def _node(data: bytes, start: int, end: int) -> _Node:
    node = _Node()
    for number, wire_type, value_start, value_end in _fields(data, start, end):
        if wire_type != 2:
            continue
        if number == 1:
            node.inputs.append(_string(data, value_start, value_end))
        elif number == 2:
            node.outputs.append(_string(data, value_start, value_end))
        elif number == 4:
            node.op_type = _string(data, value_start, value_end)
    return node


def _tensor(data: bytes, start: int, end: int) -> _Scalar:
    tensor = _Scalar()
    for number, wire_type, value_start, value_end in _fields(data, start, end):
        if number == 1 and wire_type == 0:
            tensor.dims.append(_read_varint(data, value_start)[0])
        elif number == 2 and wire_type == 0:
            tensor.data_type = _read_varint(data, value_start)[0]
        elif number == 8 and wire_type == 2:
            tensor.name = _string(data, value_start, value_end)
        elif _one_float(number, wire_type, value_end - value_start):
            tensor.value_at = value_start
    return tensor


def _one_float(number: int, wire_type: int, length: int) -> bool:
    """raw_data of 4 bytes, packed float_data of one value, or one unpacked float_data value."""
    return (number in (4, 9) and wire_type == 2 and length == 4) or (number == 4 and wire_type == 5)


def _inverse_temperature(model: bytes) -> _Scalar:
    """The scalar ``s`` of ``Mul(logits, s) -> Softmax -> probabilities``."""
    start, end = _graph_span(model)
    nodes, scalars = [], {}
    for number, wire_type, value_start, value_end in _fields(model, start, end):
        if number == 1 and wire_type == 2:
            nodes.append(_node(model, value_start, value_end))
        elif number == 5 and wire_type == 2:
            tensor = _tensor(model, value_start, value_end)
            scalars[tensor.name] = tensor
    produced = {out: node for node in nodes for out in node.outputs}
    softmax = produced.get(PROBABILITIES_OUTPUT)
    if softmax is None or softmax.op_type != "Softmax" or len(softmax.inputs) != 1:
        raise ArtifactError("the graph's probabilities are not a Softmax: not a calibserve artifact")
    mul = produced.get(softmax.inputs[0])
    if mul is None or mul.op_type != "Mul":
        raise ArtifactError("the Softmax does not scale its input by one factor: no temperature to replace")
    found = [scalars[name] for name in mul.inputs if name in scalars]
    if len(found) != 1:
        raise ArtifactError("the temperature's factor is not one initializer")
    scalar = found[0]
    if scalar.data_type != FLOAT or any(d != 1 for d in scalar.dims) or scalar.value_at is None:
        raise ArtifactError(f"the temperature's factor {scalar.name!r} is not a float32 scalar")
    return scalar


def served_temperature(model: bytes) -> float:
    """T of the artifact: 1 / its Softmax's factor."""
    scalar = _inverse_temperature(model)
    assert scalar.value_at is not None
    (inverse,) = struct.unpack("<f", model[scalar.value_at : scalar.value_at + 4])
    return 1.0 / float(inverse)


def with_temperature(model: bytes, temperature: float) -> bytes:
    """The same artifact with ``probabilities = softmax(logits / temperature)``: four bytes replaced."""
    if not temperature > 0.0:
        raise ArtifactError(f"a temperature must be > 0, got {temperature!r}")
    scalar = _inverse_temperature(model)
    assert scalar.value_at is not None
    at = scalar.value_at
    return model[:at] + struct.pack("<f", 1.0 / temperature) + model[at + 4 :]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def with_card(model: bytes, card_json: str) -> bytes:
    """The model with ``card_json`` as its only metadata property (what ``embed_card`` does with ``onnx``)."""
    kept = b"".join(model[start:end] for number, start, end in _top_level_fields(model) if number != 14)
    entry = _length_delimited(1, CARD_METADATA_KEY.encode()) + _length_delimited(2, card_json.encode())
    return kept + _length_delimited(14, entry)
