"""``calibserve calibrate``: turn a classifier someone else trained (any single-input ONNX model) into a
calibrated calibserve artifact: temperature scaling fitted on held-out labelled data, folded into the graph,
and the same card as the trainer's with a ``source`` instead of a training config.

Needs ``onnx`` (graph surgery) and onnxruntime, not torch: the ``calibrate`` extra. Every problem with the
model or the data is a ``DataError`` or ``ArtifactError`` that names what to change, and nothing is written
until the new artifact has been built and verified.
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from service import __version__
from service import card as c
from service.calibration.metrics import nll
from service.calibration.reference import selective_prediction_table
from service.calibration.temperature import TemperatureFit, fit_temperature, softmax
from service.errors import ArtifactError, DataError
from service.training.data import read_csv_columns, read_npz_arrays
from service.training.evaluate import conformal_summaries, reference_distribution, split_metrics
from service.training.files import embed_card

Scores = Literal["logits", "probabilities"]

# Probabilities are turned into log-probabilities before the temperature; this floor keeps log(0) finite. It
# is float32's smallest normal number (log = -87.3): a float32 probability holds nothing below it anyway, and a
# higher floor would be wrong, because a temperature T > 1 raises p to the power 1/T (1e-12 becomes 1e-4 at
# T = 3, and a model sure it is not class k would be made unsure).
_PROBABILITY_FLOOR = float(np.finfo(np.float32).tiny)
# Rows whose values lie in [0, 1] and sum to 1 within this are probabilities (float32 softmax rounding).
_SUM_TOLERANCE = 1e-3
# The fewest rows of each class in each half (calibration and test) that make a fit and a measurement.
MIN_ROWS_PER_CLASS = 2
_BATCH_ROWS = 4096

_ONNX_DTYPES: dict[int, c.InputDtype] = {
    TensorProto.FLOAT: "float32",
    TensorProto.DOUBLE: "float64",
    TensorProto.FLOAT16: "float16",
    TensorProto.INT64: "int64",
    TensorProto.INT32: "int32",
    TensorProto.INT16: "int16",
    TensorProto.INT8: "int8",
    TensorProto.UINT8: "uint8",
    TensorProto.UINT16: "uint16",
    TensorProto.UINT32: "uint32",
}
_FLOAT_OUTPUTS = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16)


@dataclass(frozen=True, slots=True)
class CalibrateOptions:
    """What the command line says besides the model and the data."""

    name: str
    output: str | None = None
    scores: Scores | None = None
    classes: tuple[str, ...] | None = None
    label_smoothing: float | None = None
    seed: int = 0
    label_column: str = "label"
    progress: bool = True
    temperature: float | None = None  # fixed instead of fitted (1: the model's own scores)


@dataclass(frozen=True, slots=True)
class ModelSignature:
    """The original model's one input and the output whose scores get calibrated."""

    input_name: str
    input_dtype: c.InputDtype
    input_shape: tuple[int, ...]  # -1 for free dimensions, the first is the batch
    output_name: str
    n_classes: int | None  # None when the graph leaves K free


@dataclass(frozen=True, slots=True)
class Labelled:
    inputs: NDArray[Any]  # [N, ...] in the model's input dtype
    labels: NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class CalibrationResult:
    """What ``calibrate`` built: the artifact's bytes and card, and what it decided on the way."""

    model_bytes: bytes
    card: c.CalibrationCard
    scores: Scores
    scores_detected: bool
    notes: tuple[str, ...]


# ---------------------------------------------------------------------------------------------- the model


def _dims(value_info: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    tensor = value_info.type.tensor_type
    if not value_info.type.HasField("tensor_type") or not tensor.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor.shape.dim)


def inspect_model(model: onnx.ModelProto, output: str | None) -> ModelSignature:
    """The single input and the ``[N, K]`` float output to calibrate; ``ArtifactError`` naming the problem."""
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        names = ", ".join(repr(i.name) for i in inputs)
        raise ArtifactError(
            f"the model has {len(inputs)} inputs ({names}); calibserve serves single-input classifiers. "
            "Multi-input models (e.g. input_ids + attention_mask) are not supported yet"
        )
    (inp,) = inputs
    elem = inp.type.tensor_type.elem_type if inp.type.HasField("tensor_type") else None
    if elem not in _ONNX_DTYPES:
        kind = TensorProto.DataType.Name(elem) if elem else inp.type.WhichOneof("value")
        raise ArtifactError(f"input {inp.name!r} is {kind}; calibserve accepts one numeric tensor input")
    shape = _dims(inp)
    if shape is None or len(shape) < 2:
        raise ArtifactError(f"input {inp.name!r} must be a tensor [N, ...] with a batch dimension, got {shape}")
    chosen = _choose_output(list(graph.output), output)
    dims = _dims(chosen)
    assert dims is not None
    return ModelSignature(
        input_name=inp.name,
        input_dtype=_ONNX_DTYPES[elem],
        input_shape=(-1, *shape[1:]),
        output_name=chosen.name,
        n_classes=dims[1] if dims[1] > 0 else None,
    )


def _describe(value_info: onnx.ValueInfoProto) -> str:
    kind = value_info.type.WhichOneof("value")
    if kind != "tensor_type":
        return f"{value_info.name!r} ({kind.replace('_type', '') if kind else 'unknown'})"
    elem = TensorProto.DataType.Name(value_info.type.tensor_type.elem_type)
    return f"{value_info.name!r} ({elem} {list(_dims(value_info) or [])})"


def _is_scores(value_info: onnx.ValueInfoProto) -> bool:
    dims = _dims(value_info)
    return (
        value_info.type.HasField("tensor_type")
        and value_info.type.tensor_type.elem_type in _FLOAT_OUTPUTS
        and dims is not None
        and len(dims) == 2
    )


_ZIPMAP_HINT = (
    "a sequence of maps (scikit-learn's ZipMap) cannot be calibrated: export without it, e.g. "
    "skl2onnx.to_onnx(model, X, options={'zipmap': False}), so that the probabilities are a [N, K] tensor"
)


def _choose_output(outputs: Sequence[onnx.ValueInfoProto], wanted: str | None) -> onnx.ValueInfoProto:
    listed = ", ".join(_describe(o) for o in outputs)
    if wanted is not None:
        match = [o for o in outputs if o.name == wanted]
        if not match:
            raise ArtifactError(f"--output {wanted!r} is not an output of the model; its outputs are {listed}")
        if not _is_scores(match[0]):
            hint = _ZIPMAP_HINT if match[0].type.HasField("sequence_type") else "it must be a [N, K] float tensor"
            raise ArtifactError(f"output {_describe(match[0])} cannot be calibrated: {hint}")
        return match[0]
    candidates = [o for o in outputs if _is_scores(o)]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        hint = (
            _ZIPMAP_HINT
            if any(o.type.HasField("sequence_type") for o in outputs)
            else ("calibrate needs an output of class scores, a [N, K] float tensor (logits or probabilities)")
        )
        raise ArtifactError(f"no output of the model holds [N, K] float scores (outputs: {listed}); {hint}")
    names = ", ".join(repr(o.name) for o in candidates)
    raise ArtifactError(f"the model has several [N, K] float outputs ({names}); choose one with --output")


# ---------------------------------------------------------------------------------------------- the data


def load_labelled(
    path: Path, signature: ModelSignature, classes: tuple[str, ...] | None, label_column: str = "label"
) -> tuple[Labelled, tuple[str, ...]]:
    """``X`` shaped like the model's input and labels as class indices, from an ``.npz`` (``X``, ``y``) or a
    ``.csv`` (the features, and the class in ``label_column``; flat ``[N, F]`` models only)."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.suffix.lower() == ".npz":
        features, raw = read_npz_arrays(path)
    elif path.suffix.lower() == ".csv":
        features, text, _ = read_csv_columns(path, label_column)
        raw = np.array(text)
    else:
        raise DataError(f"{path}: calibrate reads .npz (X, y) or .csv files")
    expected = signature.input_shape[1:]
    if features.ndim != len(signature.input_shape) or any(
        want not in (-1, got) for want, got in zip(expected, features.shape[1:], strict=True)
    ):
        raise DataError(
            f"{path}: X has shape {list(features.shape)}, but the model's input {signature.input_name!r} is "
            f"{list(signature.input_shape)} (-1: any size)"
        )
    inputs = _as_input_dtype(path, features, signature.input_dtype)
    labels, names = _encode_labels(path, raw, classes, signature.n_classes)
    return Labelled(inputs, labels), names


def _as_input_dtype(path: Path, features: NDArray[Any], dtype: c.InputDtype) -> NDArray[Any]:
    """X in the model's input dtype (the readers already refused non-real X): integers must stay exact."""
    if not np.all(np.isfinite(features)):
        bad = int(np.flatnonzero(~np.isfinite(features.reshape(len(features), -1)).all(axis=1))[0])
        raise DataError(f"{path}: X has NaN or infinite values (first in row {bad})")
    target = np.dtype(dtype)
    converted = features.astype(target)
    if np.issubdtype(target, np.integer) and not np.array_equal(converted, features):
        raise DataError(f"{path}: X holds values that are not exact {dtype} (the model's input type)")
    return converted


def _encode_labels(
    path: Path, raw: NDArray[Any], classes: tuple[str, ...] | None, n_outputs: int | None
) -> tuple[NDArray[np.int64], tuple[str, ...]]:
    text = [str(v) for v in raw.tolist()]
    if classes is None and np.issubdtype(raw.dtype, np.integer):
        k = n_outputs if n_outputs is not None else int(raw.max()) + 1
        classes = tuple(str(i) for i in range(k))
        index = {str(i): i for i in range(k)}
    elif classes is None:
        classes = tuple(sorted(set(text)))
        index = {name: i for i, name in enumerate(classes)}
    else:
        index = {name: i for i, name in enumerate(classes)}
        if np.issubdtype(raw.dtype, np.integer):
            index.update({str(i): i for i in range(len(classes))})
    if n_outputs is not None and len(classes) != n_outputs:
        raise DataError(
            f"{path}: {len(classes)} classes ({', '.join(classes[:10])}) but the model's output has K = {n_outputs}"
        )
    unknown = sorted(set(text) - set(index))
    if unknown:
        raise DataError(
            f"{path}: label(s) {', '.join(repr(u) for u in unknown[:5])} are not among the model's {len(classes)} "
            f"classes ({', '.join(classes[:10])}); give --classes in the order of the output's columns"
        )
    return np.fromiter((index[t] for t in text), dtype=np.int64, count=len(text)), classes


def stratified_halves(
    labels: NDArray[np.int64], n_classes: int, seed: int
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Calibration and test rows, each class split in half (the odd row to calibration); numpy only."""
    rng = np.random.default_rng(seed)
    calibration: list[NDArray[np.intp]] = []
    test: list[NDArray[np.intp]] = []
    for k in range(n_classes):
        rows = rng.permutation(np.flatnonzero(labels == k))
        half = math.ceil(rows.size / 2)
        calibration.append(rows[:half])
        test.append(rows[half:])
    return np.sort(np.concatenate(calibration)), np.sort(np.concatenate(test))


def _check_class_counts(labels: NDArray[np.int64], classes: tuple[str, ...], part: str, minimum: int) -> None:
    counts = np.bincount(labels, minlength=len(classes))
    short = [f"{classes[k]!r} ({counts[k]})" for k in range(len(classes)) if counts[k] < minimum]
    if short:
        raise DataError(
            f"too few rows per class in the {part}: {', '.join(short[:10])}; calibrate needs at least {minimum} of "
            "every class there (temperature, conformal thresholds and test metrics are per class mix)"
        )


# ---------------------------------------------------------------------------------------------- scores


def run_scores(
    model_bytes: bytes, signature: ModelSignature, inputs: NDArray[Any], what: str = "", progress: bool = False
) -> NDArray[np.float64]:
    """The original output on every row, as float64 [N, K], in batches; with ``progress``, a line per batch on
    stderr once the data takes more than a few batches (a large CNN on 100k images takes minutes)."""
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    parts = []
    report = progress and len(inputs) > 4 * _BATCH_ROWS
    started = time.perf_counter()
    for start in range(0, len(inputs), _BATCH_ROWS):
        (out,) = session.run([signature.output_name], {signature.input_name: inputs[start : start + _BATCH_ROWS]})
        parts.append(np.asarray(out, dtype=np.float64))
        if report:
            done = min(start + _BATCH_ROWS, len(inputs))
            print(
                f"scoring {what}: {done}/{len(inputs)} rows, {time.perf_counter() - started:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    scores = np.concatenate(parts)
    if scores.ndim != 2 or scores.shape[0] != len(inputs):
        raise ArtifactError(f"output {signature.output_name!r} gave shape {list(scores.shape)}, expected [N, K]")
    if not np.all(np.isfinite(scores)):
        raise ArtifactError(f"output {signature.output_name!r} has NaN or infinite scores on this data")
    return scores


def detect_scores(scores: NDArray[np.float64]) -> Scores:
    """Probabilities if every row lies in [0, 1] and sums to 1 (within float32 rounding), else logits."""
    in_range = scores.min() >= -1e-6 and scores.max() <= 1 + 1e-6
    sums = np.abs(scores.sum(axis=1) - 1.0).max() <= _SUM_TOLERANCE
    return "probabilities" if in_range and sums else "logits"


def to_logits(scores: NDArray[np.float64], kind: Scores) -> NDArray[np.float64]:
    """What the temperature divides: the logits, or the log of the probabilities (equal up to a per-row
    constant, which softmax ignores), exactly as the appended graph computes them."""
    if kind == "logits":
        return scores
    if scores.min() < -1e-6 or scores.max() > 1 + 1e-6 or np.abs(scores.sum(axis=1) - 1).max() > _SUM_TOLERANCE:
        raise ArtifactError("--scores probabilities, but the output's rows are not probability vectors")
    out: NDArray[np.float64] = np.log(np.maximum(scores.astype(np.float32), _PROBABILITY_FLOOR)).astype(np.float64)
    return out


# ---------------------------------------------------------------------------------------------- graph surgery


def _unique(graph: onnx.GraphProto, base: str) -> str:
    taken = {n for node in graph.node for n in (*node.input, *node.output)}
    taken |= {v.name for v in (*graph.input, *graph.output, *graph.initializer)}
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    return name


def _rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]


def append_temperature(
    model: onnx.ModelProto, signature: ModelSignature, kind: Scores, temperature: float, n_classes: int
) -> onnx.ModelProto:
    """The original graph with ``logits`` (uncalibrated: the model's logits or log-probabilities, float32) and
    ``probabilities`` = softmax(logits / T) as its only outputs; the original output is kept inside the graph."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    source = signature.output_name
    produced = {name for node in graph.node for name in node.output}
    for reserved in (c.LOGITS_OUTPUT, c.PROBABILITIES_OUTPUT):  # the names the new outputs take
        if reserved in produced:  # e.g. recalibrating a calibserve artifact, which has both
            renamed = _unique(graph, f"calibserve_original_{reserved}")
            _rename_tensor(graph, reserved, renamed)
            source = renamed if source == reserved else source
    as_float = _unique(graph, "calibserve_scores_f32")
    nodes = [helper.make_node("Cast", [source], [as_float], to=TensorProto.FLOAT)]
    raw = as_float
    if kind == "probabilities":
        floor = _unique(graph, "calibserve_probability_floor")
        clipped = _unique(graph, "calibserve_clipped")
        graph.initializer.append(numpy_helper.from_array(np.array(_PROBABILITY_FLOOR, dtype=np.float32), floor))
        raw = _unique(graph, "calibserve_log_probabilities")
        nodes += [helper.make_node("Max", [as_float, floor], [clipped]), helper.make_node("Log", [clipped], [raw])]
    inverse = _unique(graph, "calibserve_inverse_temperature")
    graph.initializer.append(numpy_helper.from_array(np.array(1.0 / temperature, dtype=np.float32), inverse))
    scaled = _unique(graph, "calibserve_scaled_logits")
    nodes += [
        helper.make_node("Identity", [raw], [c.LOGITS_OUTPUT]),
        helper.make_node("Mul", [raw, inverse], [scaled]),
        helper.make_node("Softmax", [scaled], [c.PROBABILITIES_OUTPUT], axis=1),
    ]
    graph.node.extend(nodes)
    del graph.output[:]
    for name in (c.LOGITS_OUTPUT, c.PROBABILITIES_OUTPUT):
        graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", n_classes]))
    del out.metadata_props[:]
    onnx.checker.check_model(out, full_check=True)
    return out


# ---------------------------------------------------------------------------------------------- the whole step


def calibrate_model(
    model_path: Path, data_path: Path, options: CalibrateOptions, test_path: Path | None = None
) -> CalibrationResult:
    """Fit, fold in, measure and describe: everything ``calibserve calibrate`` writes, in memory."""
    original = model_path.read_bytes()
    try:
        model = onnx.load_from_string(original)
    except Exception as exc:  # onnx raises DecodeError and others for a file that is not a model
        raise ArtifactError(f"{model_path}: not an ONNX model ({type(exc).__name__})") from None
    signature = inspect_model(model, options.output)
    data, classes = load_labelled(data_path, signature, options.classes, options.label_column)
    notes: list[str] = []
    if test_path is not None:
        test, test_classes = load_labelled(test_path, signature, classes, options.label_column)
        assert test_classes == classes
        calibration = data
        _check_class_counts(calibration.labels, classes, "calibration data (--data)", MIN_ROWS_PER_CLASS)
        _check_class_counts(test.labels, classes, "test data (--test-data)", MIN_ROWS_PER_CLASS)
    else:
        _check_class_counts(data.labels, classes, f"data {data_path.name}", 2 * MIN_ROWS_PER_CLASS)
        cal_rows, test_rows = stratified_halves(data.labels, len(classes), options.seed)
        calibration = Labelled(data.inputs[cal_rows], data.labels[cal_rows])
        test = Labelled(data.inputs[test_rows], data.labels[test_rows])
        notes.append(
            f"split {data_path.name} stratified into {len(cal_rows)} calibration and {len(test_rows)} test rows "
            f"(seed {options.seed})"
        )
    cal_scores = run_scores(original, signature, calibration.inputs, "calibration", options.progress)
    test_scores = run_scores(original, signature, test.inputs, "test", options.progress)
    if cal_scores.shape[1] != len(classes):
        raise DataError(f"the output has K = {cal_scores.shape[1]} columns but the data names {len(classes)} classes")
    kind: Scores = options.scores or detect_scores(cal_scores)
    notes.append(
        f"output {signature.output_name!r} holds {kind}"
        + (" (detected: rows in [0, 1] summing to 1)" if options.scores is None and kind == "probabilities" else "")
        + (" (detected: rows are not probability vectors)" if options.scores is None and kind == "logits" else "")
    )
    cal_logits, test_logits = to_logits(cal_scores, kind), to_logits(test_scores, kind)
    fit = (
        fit_temperature(cal_logits, calibration.labels)
        if options.temperature is None
        else fixed_temperature(cal_logits, calibration.labels, options.temperature)
    )
    how = "fitted" if options.temperature is None else "given (--temperature), not fitted"
    notes.append(
        f"temperature T = {fit.temperature:.4f}, {how} (calibration NLL {fit.nll_before:.4f} -> {fit.nll_after:.4f})"
    )
    bare = append_temperature(model, signature, kind, fit.temperature, len(classes))
    bare_bytes = bytes(bare.SerializeToString(deterministic=True))
    card = _card(
        options,
        signature,
        classes,
        original,
        model_path,
        kind,
        fit,
        calibration,
        test,
        cal_logits,
        test_logits,
        c.model_digest(bare_bytes),
    )
    model_bytes = embed_card(bare_bytes, card)
    if c.model_digest(model_bytes) != card.version:
        raise ArtifactError("embedding the card changed the graph digest; refusing to write the artifact")
    _verify(model_bytes, signature, test.inputs, softmax(test_logits, fit.temperature))
    return CalibrationResult(model_bytes, card, kind, options.scores is None, tuple(notes))


def fixed_temperature(logits: NDArray[np.float64], labels: NDArray[np.int64], temperature: float) -> TemperatureFit:
    """A temperature the user chose, described as a fit is (the calibration NLL at T = 1 and at T)."""
    return TemperatureFit(
        temperature=temperature,
        log_temperature=math.log(temperature),
        nll_before=nll(softmax(logits, 1.0), labels),
        nll_after=nll(softmax(logits, temperature), labels),
        iterations=0,
        at_bound=False,
    )


def _card(
    options: CalibrateOptions,
    signature: ModelSignature,
    classes: tuple[str, ...],
    original: bytes,
    model_path: Path,
    kind: Scores,
    fit: TemperatureFit,
    calibration: Labelled,
    test: Labelled,
    cal_logits: NDArray[np.float64],
    test_logits: NDArray[np.float64],
    version: str,
) -> c.CalibrationCard:
    before = softmax(test_logits, 1.0)
    after = softmax(test_logits, fit.temperature)
    cal_probs = softmax(cal_logits, fit.temperature)
    instance = signature.input_shape[1:]
    n_features = math.prod(instance) if all(d > 0 for d in instance) else -1
    all_labels = np.concatenate([calibration.labels, test.labels])
    return c.CalibrationCard(
        name=options.name,
        version=version,
        created=datetime.now(UTC),
        producer=f"calibserve {__version__} calibrate",
        classes=classes,
        io=c.IOInfo(
            input=signature.input_name,
            n_features=n_features,
            feature_names=None,
            input_dtype=signature.input_dtype,
            input_shape=signature.input_shape,
        ),
        dataset=c.DatasetInfo(
            name=model_path.stem,
            n_samples=len(all_labels),
            n_train=0,
            n_calibration=len(calibration.labels),
            n_test=len(test.labels),
            class_counts=tuple(int(v) for v in np.bincount(all_labels, minlength=len(classes))),
            split_seed=options.seed,
        ),
        source=c.SourceInfo(
            file_name=model_path.name,
            sha256=hashlib.sha256(original).hexdigest(),
            output=signature.output_name,
            scores=kind,
            scores_detected=options.scores is None,
            label_smoothing=options.label_smoothing,
        ),
        temperature=c.TemperatureInfo(
            value=fit.temperature,
            log_value=fit.log_temperature,
            n=len(calibration.labels),
            nll_before=fit.nll_before,
            nll_after=fit.nll_after,
            at_bound=fit.at_bound,
        ),
        test=c.EvaluationMetrics(
            before_temperature=split_metrics(before, test.labels, options.seed),
            after_temperature=split_metrics(after, test.labels, options.seed),
        ),
        conformal=conformal_summaries(cal_probs, calibration.labels, after, test.labels),
        selective=selective_prediction_table(after, test.labels),
        reference=reference_distribution(after, len(classes)),
    )


def _verify(model_bytes: bytes, signature: ModelSignature, inputs: NDArray[Any], expected: NDArray[np.float64]) -> None:
    """The built graph's probabilities must equal softmax(logits / T) computed here (float32 tolerance)."""
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    (probs,) = session.run([c.PROBABILITIES_OUTPUT], {signature.input_name: inputs[:_BATCH_ROWS]})
    worst = float(np.max(np.abs(np.asarray(probs, dtype=np.float64) - expected[:_BATCH_ROWS])))
    if worst > 1e-4:
        raise ArtifactError(f"the calibrated graph disagrees with the fitted temperature by {worst:.2e}; not written")
