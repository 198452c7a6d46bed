"""Training data: scikit-learn's bundled digits, or the user's own CSV / NPZ, split three ways.

Every problem with a data set is a ``DataError`` whose message names the file, column, row or class
at fault, because the person reading it is looking at their own data, not at our code.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.errors import DataError

BUILTIN_DATASETS = ("digits",)


@dataclass(frozen=True, slots=True)
class Dataset:
    """Raw features (float64 [N, F]) and integer labels (int64 [N], indices into ``class_names``)."""

    name: str
    features: NDArray[np.float64]
    labels: NDArray[np.int64]
    class_names: tuple[str, ...]
    feature_names: tuple[str, ...] | None

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True, slots=True)
class Split:
    """Row indices of the three disjoint, stratified parts of a data set."""

    train: NDArray[np.intp]
    calibration: NDArray[np.intp]
    test: NDArray[np.intp]
    seed: int


def load_dataset(source: str, label_column: str | None = None) -> Dataset:
    """Load ``digits`` or a ``.csv`` / ``.npz`` path and check it is usable for classification."""
    if source in BUILTIN_DATASETS:
        return _load_digits()
    path = Path(source)
    if not path.exists():
        raise DataError(
            f"data source {source!r} is neither a built-in data set ({', '.join(BUILTIN_DATASETS)}) "
            "nor an existing file"
        )
    suffix = path.suffix.lower()
    if suffix == ".csv":
        if not label_column:
            raise DataError(f"{path}: a CSV needs --label-column naming the column that holds the class")
        return _load_csv(path, label_column)
    if suffix == ".npz":
        return _load_npz(path)
    raise DataError(f"{path}: unsupported file type {suffix!r}; use .csv or .npz")


def _load_digits() -> Dataset:
    # Imported here: scikit-learn is a trainer-only dependency. The data ships inside the package.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return _build(
        "digits",
        np.asarray(bunch.data, dtype=np.float64),
        [str(v) for v in bunch.target],
        tuple(bunch.feature_names),
    )


def _load_csv(path: Path, label_column: str) -> Dataset:
    features, labels, feature_names = read_csv_columns(path, label_column)
    return _build(path.stem, features, labels, feature_names)


def read_csv_columns(path: Path, label_column: str) -> tuple[NDArray[np.float64], list[str], tuple[str, ...]]:
    """Features (float64 [N, F], header order without the label column), labels as text and feature names.

    Shared by ``train`` and ``calibrate``: one reader, one set of messages naming the line and the column.
    """
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header:
            raise DataError(f"{path}: the file is empty (expected a header row)")
        header = [name.strip() for name in header]
        if label_column not in header:
            raise DataError(f"{path}: label column {label_column!r} not found; columns are {', '.join(header)}")
        label_at = header.index(label_column)
        feature_names = tuple(name for i, name in enumerate(header) if i != label_at)
        if not feature_names:
            raise DataError(f"{path}: no feature columns besides the label column {label_column!r}")
        rows: list[list[float]] = []
        labels: list[str] = []
        for line_no, record in enumerate(reader, start=2):
            if not record or all(not cell.strip() for cell in record):
                continue
            if len(record) != len(header):
                raise DataError(f"{path}, line {line_no}: {len(record)} fields, header has {len(header)}")
            labels.append(record[label_at].strip())
            rows.append(
                [
                    _parse_feature(path, line_no, name, cell)
                    for name, cell in zip(feature_names, _without(record, label_at), strict=True)
                ]
            )
    if not rows:
        raise DataError(f"{path}: no data rows after the header")
    return np.asarray(rows, dtype=np.float64), labels, feature_names


def _without(record: list[str], index: int) -> list[str]:
    return record[:index] + record[index + 1 :]


def _parse_feature(path: Path, line_no: int, column: str, cell: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise DataError(
            f"{path}, line {line_no}: feature column {column!r} holds {cell!r}, which is not a number"
        ) from None
    if not math.isfinite(value):
        raise DataError(f"{path}, line {line_no}: feature column {column!r} holds {cell!r} (NaN or infinite)")
    return value


def _load_npz(path: Path) -> Dataset:
    features, raw_labels = read_npz_arrays(path)
    if features.ndim != 2:
        raise DataError(f"{path}: X must be 2-D [n_samples, n_features], got shape {features.shape}")
    return _build(path.stem, features.astype(np.float64), [str(v) for v in raw_labels.tolist()], None)


def read_npz_arrays(path: Path) -> tuple[NDArray[Any], NDArray[Any]]:
    """``X`` (real numbers, any shape ``[N, ...]``) and ``y`` (1-D, one label per row) from an ``.npz``.

    Shared by ``train`` (which also needs X to be 2-D) and ``calibrate`` (X shaped like the model's input).
    """
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    with archive:
        missing = [key for key in ("X", "y") if key not in archive.files]
        if missing:
            raise DataError(f"{path}: missing array(s) {', '.join(missing)}; an .npz needs X and y")
        features, raw_labels = archive["X"], archive["y"]
    if raw_labels.ndim != 1 or len(raw_labels) != len(features):
        raise DataError(f"{path}: y must be 1-D with one label per row of X ({len(features)} rows)")
    if not (np.issubdtype(features.dtype, np.number) and not np.issubdtype(features.dtype, np.complexfloating)):
        raise DataError(f"{path}: X has dtype {features.dtype}, expected real numbers")
    return features, raw_labels


def _build(
    name: str, features: NDArray[np.float64], labels: list[str], feature_names: tuple[str, ...] | None
) -> Dataset:
    bad_rows = np.flatnonzero(~np.isfinite(features).all(axis=1))
    if bad_rows.size:
        raise DataError(f"{name}: {bad_rows.size} row(s) have NaN or infinite features (first at row {bad_rows[0]})")
    class_names = _sorted_classes(set(labels))
    if len(class_names) < 2:
        raise DataError(f"{name}: only one class ({class_names[0]!r}); classification needs at least two")
    index = {label: i for i, label in enumerate(class_names)}
    encoded = np.fromiter((index[label] for label in labels), dtype=np.int64, count=len(labels))
    return Dataset(name, features, encoded, class_names, feature_names)


def _sorted_classes(labels: set[str]) -> tuple[str, ...]:
    """Numeric labels sort as numbers ("2" before "10"), anything else as text."""
    try:
        return tuple(sorted(labels, key=float))
    except ValueError:
        return tuple(sorted(labels))


def stratified_split(dataset: Dataset, calibration_fraction: float, test_fraction: float, seed: int) -> Split:
    """Three disjoint stratified parts; temperature and conformal thresholds are fitted on calibration.

    Each class needs at least one expected sample in every part, otherwise the test metrics (and the
    conformal guarantee) silently leave that class out.
    """
    if not (0 < calibration_fraction < 1 and 0 < test_fraction < 1 and calibration_fraction + test_fraction < 1):
        raise DataError(
            f"calibration ({calibration_fraction}) and test ({test_fraction}) fractions must be in (0, 1) "
            "and leave room for training"
        )
    smallest_part = min(calibration_fraction, test_fraction, 1 - calibration_fraction - test_fraction)
    needed = math.ceil(1 / smallest_part)
    counts = np.bincount(dataset.labels, minlength=dataset.n_classes)
    for class_name, count in zip(dataset.class_names, counts, strict=True):
        if count < needed:
            raise DataError(
                f"{dataset.name}: class {class_name!r} has {count} sample(s); the train/calibration/test "
                f"split needs at least {needed} per class"
            )
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(dataset.labels))
    rest, test = train_test_split(indices, test_size=test_fraction, stratify=dataset.labels, random_state=seed)
    train, calibration = train_test_split(
        rest,
        test_size=calibration_fraction / (1 - test_fraction),
        stratify=dataset.labels[rest],
        random_state=seed,
    )
    return Split(np.sort(train), np.sort(calibration), np.sort(test), seed)
