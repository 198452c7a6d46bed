"""An OpenAPI document that describes the loaded model, not just any model.

The generic schema cannot know that this server wants rows of exactly F numbers, these feature names,
these conformal levels and at most K for ``top_k``. Once the model is loaded we write those facts
into the document, so a client generated from it (or a schema-based fuzzer) sends what is accepted.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from service.api.schemas import PredictRequest
from service.card import CalibrationCard
from service.inference.features import FLOAT32_MAX  # the graph takes float32: larger magnitudes get a 422

FEATURE = {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX}


def describe_model(schema: dict[str, Any], card: CalibrationCard, max_instances: int) -> dict[str, Any]:
    schema = copy.deepcopy(schema)
    request = schema["components"]["schemas"]["PredictRequest"]["properties"]
    instances = request["instances"]
    instances["maxItems"] = max_instances
    as_list, as_object = instances["items"]["oneOf"]
    as_list["minItems"] = as_list["maxItems"] = card.io.n_features
    as_list["items"] = dict(FEATURE)
    if card.io.feature_names is None:
        instances["items"] = as_list
    else:
        as_object.pop("additionalProperties", None)
        as_object["properties"] = {name: dict(FEATURE) for name in card.io.feature_names}
        as_object["required"] = list(card.io.feature_names)
        as_object["additionalProperties"] = False
    request["coverage"]["enum"] = [level.coverage for level in card.conformal]
    request["coverage"]["default"] = min(level.coverage for level in card.conformal)
    request["top_k"]["anyOf"][0]["maximum"] = card.n_classes
    request["model"]["anyOf"][0]["enum"] = [card.name]
    for path in schema["paths"].values():
        for operation in path.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("name") == "name" and parameter.get("in") == "path":
                    parameter["schema"]["enum"] = [card.name]
                if parameter.get("name") == "version" and parameter.get("in") == "path":
                    parameter["schema"]["enum"] = [card.version]
    return schema


def add_request_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The predict routes parse their body themselves (fast path), so FastAPI does not list
    ``PredictRequest``; the routes' ``openapi_extra`` refers to it, and here it is."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    request = PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(request.pop("$defs", {}))
    components["PredictRequest"] = request
    return schema


def install_model_openapi(app: FastAPI, card_of: Callable[[], CalibrationCard | None], max_instances: int) -> None:
    """Replace ``app.openapi`` so the document names the loaded model's shapes once it is loaded."""
    generic = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = add_request_schema(generic())
        card = card_of()
        if card is None:
            app.openapi_schema = None  # not loaded yet: answer the generic document, do not cache it
            return schema
        app.openapi_schema = describe_model(schema, card, max_instances)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
