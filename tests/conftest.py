"""Shared fixtures: real artifacts, trained for a few epochs into temporary directories."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from tests.postgres import SKIP_REASON as POSTGRES_SKIP_REASON
from tests.postgres import PostgresServer, find_bindir, running_postgres

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIR = REPO_ROOT / "models" / "digits"


# Tests that train or read ONNX graphs need the `train` extra; without it they skip and say so.
def load_bench(file_name: str) -> ModuleType:
    """A script of bench/ as a module, so a test can run a small, seeded version of what it measures."""
    path = REPO_ROOT / "bench" / file_name
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


TRAIN_EXTRA = "needs the 'train' extra: pip install -e '.[train]'"
TRAIN_EXTRA_MODULES = ("torch", "onnx", "onnxscript", "sklearn", "tqdm", "matplotlib")


def require_train_extra() -> None:
    """Skip the calling test (or fixture) unless every module of the `train` extra imports."""
    for module in TRAIN_EXTRA_MODULES:
        pytest.importorskip(module, reason=f"{module} is missing; {TRAIN_EXTRA}")


@pytest.fixture(scope="session")
def tiny_artifact_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real digits artifact from a short training run (a few seconds), shared by the session."""
    require_train_extra()
    from service.training.config import TrainConfig
    from service.training.data import load_dataset
    from service.training.export import write_artifact
    from service.training.train import run_training

    config = TrainConfig(epochs=4, hidden_sizes=(32,), seed=3)
    run = run_training(load_dataset("digits"), config, progress=False)
    directory = tmp_path_factory.mktemp("artifacts") / "tiny"
    write_artifact(run, directory, "tiny")
    yield directory


@pytest.fixture(scope="session", autouse=True)
def isolated_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every app and server the tests start logs into a temporary directory, never ./data."""
    import os

    directory = tmp_path_factory.mktemp("calibserve-data")
    previous = os.environ.get("CALIBSERVE_DATA_DIR")
    os.environ["CALIBSERVE_DATA_DIR"] = str(directory)
    yield directory
    if previous is None:
        os.environ.pop("CALIBSERVE_DATA_DIR", None)
    else:
        os.environ["CALIBSERVE_DATA_DIR"] = previous


@dataclass(frozen=True)
class ModelSources:
    """Artifact directories to build model repositories from: the bundled model, the same network served at
    T = 1 (its own scores: under-confident, ECE about 0.10 where the bundled card has about 0.01; made by
    ``calibserve calibrate --temperature 1``), and a byte-identical copy of the bundled model."""

    digits: Path
    digits_t1: Path
    digits_copy: Path
    digits_npz: Path

    def repository(self, root: Path, **models: Path) -> Path:
        """``root`` holding a copy of each named artifact directory (``name=source``)."""
        root.mkdir(parents=True, exist_ok=True)
        for name, source in models.items():
            shutil.copytree(source, root / name)
        return root


@pytest.fixture(scope="session")
def model_sources(tmp_path_factory: pytest.TempPathFactory) -> ModelSources:
    pytest.importorskip("onnx", reason="needs the 'calibrate' extra: pip install -e '.[calibrate]'")
    import numpy as np
    from sklearn.datasets import load_digits

    from service.cli import main

    root = tmp_path_factory.mktemp("model-sources")
    features, labels = load_digits(return_X_y=True)
    data = root / "digits.npz"
    np.savez(data, X=features.astype(np.float32), y=labels)
    t1 = root / "digits-t1"
    classes = ",".join(str(i) for i in range(10))
    command = ["calibrate", str(DEFAULT_MODEL_DIR / "model.onnx"), "--data", str(data), "--name", "digits-t1"]
    options = ["--output-dir", str(t1), "--output", "logits", "--classes", classes, "--temperature", "1"]
    assert main([*command, *options, "--no-progress"]) == 0
    copy = root / "digits-copy"
    shutil.copytree(DEFAULT_MODEL_DIR, copy)
    return ModelSources(DEFAULT_MODEL_DIR, t1, copy, data)


# -- PostgreSQL: a real server for the store tests (skipped, with the reason, only where it is not installed) --
@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = find_bindir()
    if bindir is None:
        pytest.skip(POSTGRES_SKIP_REASON)
    pytest.importorskip("psycopg", reason="needs the 'postgres' extra: pip install -e '.[postgres]'")
    with running_postgres(bindir) as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database of the session's server."""
    return postgres_server.fresh_database()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """What a ``PredictionLog`` is opened on, once per backend: a SQLite file's path, a PostgreSQL URL."""
    if request.param == "sqlite":
        return tmp_path / "log.sqlite"
    return str(request.getfixturevalue("postgres_url"))
