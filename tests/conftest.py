"""Shared fixtures: real artifacts, trained for a few epochs into temporary directories."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

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
