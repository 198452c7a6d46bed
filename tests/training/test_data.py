"""Data loading and splitting: every unusable data set fails with a message naming the problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.errors import DataError
from service.training.data import load_dataset, stratified_split

pytestmark = pytest.mark.unit


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_digits_is_bundled_and_complete() -> None:
    dataset = load_dataset("digits")
    assert dataset.features.shape == (1797, 64)
    assert dataset.class_names == tuple(str(i) for i in range(10))
    assert dataset.feature_names is not None and dataset.feature_names[0] == "pixel_0_0"
    assert np.bincount(dataset.labels).min() >= 170


def test_csv_with_label_column_anywhere(tmp_path: Path) -> None:
    rows = "\n".join(f"{i},{'ab'[i % 2]},{i * 0.5}" for i in range(20))
    dataset = load_dataset(str(write_csv(tmp_path / "d.csv", "x1,kind,x2\n" + rows + "\n")), "kind")
    assert dataset.features.shape == (20, 2)
    assert dataset.feature_names == ("x1", "x2")
    assert dataset.class_names == ("a", "b")
    assert dataset.features[3].tolist() == [3.0, 1.5]
    assert dataset.labels[3] == 1


def test_numeric_labels_sort_as_numbers(tmp_path: Path) -> None:
    rows = "\n".join(f"{i},{[2, 10, 1][i % 3]}" for i in range(30))
    dataset = load_dataset(str(write_csv(tmp_path / "d.csv", "x,y\n" + rows)), "y")
    assert dataset.class_names == ("1", "2", "10")


@pytest.mark.parametrize(
    ("content", "label", "message"),
    [
        ("x,y\n1,a\n2,b\n", "label", "label column 'label' not found; columns are x, y"),
        ("x,y\n1,a\nfoo,b\n", "y", "line 3: feature column 'x' holds 'foo', which is not a number"),
        ("x,y\n1,a\nnan,b\n", "y", "line 3: feature column 'x' holds 'nan' (NaN or infinite)"),
        ("x,y\n1,a\ninf,b\n", "y", "(NaN or infinite)"),
        ("x,y\n1,a\n2,a\n3,a\n", "y", "only one class ('a')"),
        ("x,y\n1,a\n2\n", "y", "line 3: 1 fields, header has 2"),
        ("", "y", "the file is empty"),
        ("x,y\n", "y", "no data rows"),
        ("y\na\nb\n", "y", "no feature columns"),
    ],
)
def test_bad_csv_names_the_problem(tmp_path: Path, content: str, label: str, message: str) -> None:
    path = write_csv(tmp_path / "bad.csv", content)
    with pytest.raises(DataError) as caught:
        load_dataset(str(path), label)
    assert message in caught.value.message


def test_csv_needs_a_label_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", "x,y\n1,a\n")
    with pytest.raises(DataError, match="--label-column"):
        load_dataset(str(path), None)


def test_unknown_source_and_type(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="neither a built-in data set"):
        load_dataset("no-such-thing")
    other = tmp_path / "data.parquet"
    other.write_bytes(b"x")
    with pytest.raises(DataError, match="unsupported file type '.parquet'"):
        load_dataset(str(other))


def test_npz_roundtrip_and_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    good = tmp_path / "good.npz"
    np.savez(good, X=rng.normal(size=(40, 3)), y=np.repeat([0, 1, 2, 3], 10))
    dataset = load_dataset(str(good))
    assert dataset.features.shape == (40, 3) and dataset.n_classes == 4 and dataset.feature_names is None

    np.savez(tmp_path / "nox.npz", y=np.arange(3))
    with pytest.raises(DataError, match="missing array\\(s\\) X"):
        load_dataset(str(tmp_path / "nox.npz"))
    np.savez(tmp_path / "flat.npz", X=np.arange(6.0), y=np.arange(6))
    with pytest.raises(DataError, match="X must be 2-D"):
        load_dataset(str(tmp_path / "flat.npz"))
    np.savez(tmp_path / "len.npz", X=np.ones((4, 2)), y=np.arange(3))
    with pytest.raises(DataError, match="one label per row"):
        load_dataset(str(tmp_path / "len.npz"))
    features = np.ones((4, 2))
    features[2, 1] = np.nan
    np.savez(tmp_path / "nan.npz", X=features, y=np.array([0, 1, 0, 1]))
    with pytest.raises(DataError, match="NaN or infinite features \\(first at row 2\\)"):
        load_dataset(str(tmp_path / "nan.npz"))
    np.savez(tmp_path / "str.npz", X=np.array([["a", "b"]] * 4), y=np.array([0, 1, 0, 1]))
    with pytest.raises(DataError, match="expected real numbers"):
        load_dataset(str(tmp_path / "str.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_dataset(str(tmp_path / "junk.npz"))


def test_split_is_stratified_disjoint_and_seeded() -> None:
    dataset = load_dataset("digits")
    split = stratified_split(dataset, 0.2, 0.2, seed=0)
    parts = [split.train, split.calibration, split.test]
    assert sum(len(p) for p in parts) == 1797
    assert len(np.unique(np.concatenate(parts))) == 1797
    assert len(split.test) == 360 and len(split.calibration) == 360
    overall = np.bincount(dataset.labels) / len(dataset.labels)
    for part in parts:
        share = np.bincount(dataset.labels[part], minlength=10) / len(part)
        assert np.abs(share - overall).max() < 0.01
    again = stratified_split(dataset, 0.2, 0.2, seed=0)
    other = stratified_split(dataset, 0.2, 0.2, seed=1)
    assert np.array_equal(split.test, again.test)
    assert not np.array_equal(split.test, other.test)


def test_split_rejects_a_class_too_small_for_three_parts(tmp_path: Path) -> None:
    labels = ["a"] * 20 + ["b"] * 20 + ["rare"] * 3
    rows = "\n".join(f"{i},{label}" for i, label in enumerate(labels))
    dataset = load_dataset(str(write_csv(tmp_path / "d.csv", "x,y\n" + rows)), "y")
    with pytest.raises(DataError, match="class 'rare' has 3 sample\\(s\\); .* needs at least 5 per class"):
        stratified_split(dataset, 0.2, 0.2, seed=0)
    with pytest.raises(DataError, match="fractions must be in"):
        stratified_split(dataset, 0.5, 0.5, seed=0)
