"""The OpenAPI document describes the loaded model, so generated clients send what is accepted."""

from __future__ import annotations

import pytest

from service.inference.features import FLOAT32_MAX
from tests.api.conftest import serve, settings_for

pytestmark = pytest.mark.api


def test_document_names_the_loaded_models_shapes() -> None:
    with serve(settings_for(max_instances=7)) as client:
        document = client.get("/openapi.json").json()
    request = document["components"]["schemas"]["PredictRequest"]["properties"]
    as_list, as_object = request["instances"]["items"]["oneOf"]
    assert request["instances"]["maxItems"] == 7
    assert as_list["minItems"] == as_list["maxItems"] == 64
    assert as_list["items"]["maximum"] == FLOAT32_MAX and as_list["items"]["minimum"] == -FLOAT32_MAX
    assert as_object["additionalProperties"] is False
    assert as_object["required"][:2] == ["pixel_0_0", "pixel_0_1"] and len(as_object["required"]) == 64
    assert request["coverage"]["enum"] == [0.9, 0.95]
    assert request["top_k"]["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": 10}
    name_parameter = document["paths"]["/v1/models/{name}"]["get"]["parameters"][0]
    assert name_parameter["schema"]["enum"] == ["digits"]


def test_document_is_generic_before_the_model_loads() -> None:
    with serve(lifespan=False) as client:
        document = client.get("/openapi.json").json()
    as_list = document["components"]["schemas"]["PredictRequest"]["properties"]["instances"]["items"]["oneOf"][0]
    assert "maxItems" not in as_list
