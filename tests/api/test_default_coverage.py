"""One default coverage on every protocol: the card's lowest conformal level, not a literal 0.9.

A card with levels (0.8, 0.95) answered a bare /v1 request with 422 while /v2 and the model route used 0.8.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

pytest.importorskip("onnx", reason="needs the 'calibrate' extra to re-embed a card")

from service.card import CalibrationCard
from service.training.files import embed_card
from tests.api.conftest import serve, settings_for
from tests.conftest import DEFAULT_MODEL_DIR

pytestmark = pytest.mark.api


@pytest.fixture(scope="module")
def levels_08_095(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled model with a card whose conformal levels are 0.8 and 0.95 (same graph, same version)."""
    card = CalibrationCard.from_json((DEFAULT_MODEL_DIR / "card.json").read_text())
    first, second = card.conformal
    card = card.model_copy(update={"conformal": (first.model_copy(update={"coverage": 0.8}), second)})
    out = tmp_path_factory.mktemp("levels") / "digits"
    out.mkdir()
    (out / "model.onnx").write_bytes(embed_card((DEFAULT_MODEL_DIR / "model.onnx").read_bytes(), card))
    (out / "card.json").write_text(card.to_json())
    return out


def test_every_protocol_defaults_to_the_cards_lowest_level(levels_08_095: Path, digits: NDArray[np.float64]) -> None:
    rows = digits[:3].tolist()
    with serve(settings_for(model_path=levels_08_095)) as client:
        v1 = client.predict({"instances": rows})
        assert v1.status_code == 200, v1.text
        assert v1.json()["model"]["coverage"] == 0.8
        npy = client.post("/v1/predict", content=_npy(digits[:3]), headers={"content-type": "application/x-npy"})
        assert npy.status_code == 200, npy.text
        v2 = client.post(
            "/v2/models/digits/infer",
            json={"inputs": [{"name": "features", "datatype": "FP32", "shape": [3, 64], "data": rows}]},
        )
        assert v2.status_code == 200, v2.text
        assert v2.json()["parameters"]["coverage"] == 0.8
        assert client.get("/v1/models").json()["models"][0]["coverage"] == 0.8
        schema = client.get("/openapi.json").json()
        assert "0.8" in str(schema)
        # Asking for 0.9 on this card is the 422 that names its levels.
        refused = client.predict({"instances": rows, "coverage": 0.9})
        assert refused.status_code == 422 and "0.8, 0.95" in refused.json()["error"]["message"]


def _npy(array: NDArray[np.float64]) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array.astype(np.float32))
    return buffer.getvalue()
