"""An OpenAPI document that describes the loaded model, not just any model.

The generic schema cannot know that this server wants instances of exactly this shape (64 numbers, or
``[1, 8, 8]`` nested lists), of this type (float32 range, or int64 integers), these feature names, these
conformal levels and at most K for ``top_k``. Once the model is loaded we write those facts into the
document, so a client generated from it (or a schema-based fuzzer) sends what is accepted.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from fastapi import FastAPI

from service.api.schemas import PredictRequest
from service.card import CalibrationCard
from service.inference.engine import InferenceEngine
from service.inference.inputs import FLOAT32_MAX, FREE, InputSignature

FEATURE = {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX}  # a float32 input's value


def value_schema(signature: InputSignature) -> dict[str, Any]:
    """One value of the input: an integer in its type's range, or a number its float type holds (larger
    magnitudes get a 422). An integer literal must also be one the float type holds exactly."""
    if signature.integral:
        info = np.iinfo(signature.dtype)
        return {"type": "integer", "minimum": int(info.min), "maximum": int(info.max)}
    largest = float(np.finfo(signature.dtype).max)
    exact = 2 ** (np.finfo(signature.dtype).nmant + 1)
    return {
        "type": "number",
        "minimum": -largest,
        "maximum": largest,
        "description": f"a {signature.dtype.name} value; an integer literal beyond ±{exact} must be one "
        f"{signature.dtype.name} holds exactly (write it with a decimal point if rounding is acceptable)",
    }


def instance_schema(signature: InputSignature) -> dict[str, Any]:
    """One instance as nested arrays of the instance's shape (a free dimension: any length >= 1)."""
    schema = value_schema(signature)
    for dim in reversed(signature.instance_shape):
        schema = {"type": "array", "items": schema, "minItems": 1 if dim == FREE else dim}
        if dim != FREE:
            schema["maxItems"] = dim
    return schema


def describe_request(request: dict[str, Any], card: CalibrationCard, name: str, max_instances: int) -> dict[str, Any]:
    """``PredictRequest``'s schema narrowed to what model ``name`` (served from ``card``) accepts."""
    request = copy.deepcopy(request)
    properties = request["properties"]
    signature = InputSignature.of(card.io)
    instances = properties["instances"]
    instances["maxItems"] = max_instances
    as_list, as_object = instances["items"]["oneOf"]
    described = instance_schema(signature)
    if not signature.is_flat or signature.feature_names is None:
        instances["items"] = described
        instances["description"] = f"instances of shape {signature.instance_text}, {signature.dtype.name}"
    else:
        as_list.clear()
        as_list.update(described)
        as_object.pop("additionalProperties", None)
        as_object["properties"] = {feature: value_schema(signature) for feature in signature.feature_names}
        as_object["required"] = list(signature.feature_names)
        as_object["additionalProperties"] = False
    properties["coverage"]["enum"] = [level.coverage for level in card.conformal]
    properties["coverage"]["default"] = min(level.coverage for level in card.conformal)  # = default_coverage
    properties["top_k"]["anyOf"][0]["maximum"] = card.n_classes
    properties["model"]["anyOf"][0]["enum"] = [name]
    return request


def describe_models(
    schema: dict[str, Any], engines: Sequence[InferenceEngine], default: str | None, max_instances: int
) -> dict[str, Any]:
    """The document for the models served now: each model's request schema (``PredictRequest_<name>``) and
    its own ``/v1/models/<name>/predict`` path; ``PredictRequest`` (the body of ``/v1/predict``) is the
    default model's; the path parameters list the served names and versions."""
    schema = copy.deepcopy(schema)
    components = schema["components"]["schemas"]
    generic = components["PredictRequest"]
    template = schema["paths"].get("/v1/models/{name}/predict", {}).get("post")
    for engine in engines:
        component = f"PredictRequest_{_component_name(engine.name)}"
        components[component] = describe_request(generic, engine.card, engine.name, max_instances)
        if engine.name == default:
            components["PredictRequest"] = describe_request(generic, engine.card, engine.name, max_instances)
        if template is not None:
            schema["paths"][f"/v1/models/{engine.name}/predict"] = {"post": _concrete(template, engine.name, component)}
    if default is None:
        components["PredictRequest"]["properties"]["model"]["anyOf"][0]["enum"] = [e.name for e in engines]
    for path in schema["paths"].values():
        for operation in path.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("name") == "name" and parameter.get("in") == "path":
                    parameter["schema"]["enum"] = [engine.name for engine in engines]
                if parameter.get("name") == "version" and parameter.get("in") == "path":
                    parameter["schema"]["enum"] = sorted({engine.card.version for engine in engines})
    return schema


def _component_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _concrete(operation: dict[str, Any], name: str, component: str) -> dict[str, Any]:
    """The templated predict operation for one model: no path parameter, its own request schema."""
    operation = copy.deepcopy(operation)
    operation["operationId"] = f"{operation.get('operationId', 'predict_named')}_{_component_name(name)}"
    operation["summary"] = f"Predict with {name}"
    operation["parameters"] = [p for p in operation.get("parameters", []) if p.get("name") != "name"]
    if not operation["parameters"]:
        del operation["parameters"]
    json_body = operation["requestBody"]["content"]["application/json"]
    json_body["schema"] = {"$ref": f"#/components/schemas/{component}"}
    return operation


def add_request_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The predict routes parse their body themselves (fast path), so FastAPI does not list
    ``PredictRequest``; the routes' ``openapi_extra`` refers to it, and here it is."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    request = PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(request.pop("$defs", {}))
    components["PredictRequest"] = request
    return schema


def install_model_openapi(
    app: FastAPI,
    engines_of: Callable[[], Sequence[InferenceEngine]],
    default_of: Callable[[], str | None],
    max_instances: int,
) -> None:
    """Replace ``app.openapi`` so the document names the served models' shapes once they are loaded. The
    document is cached until the repository changes (a load or unload clears ``app.openapi_schema``)."""
    generic = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = add_request_schema(generic())
        engines = engines_of()
        if not engines:
            app.openapi_schema = None  # not loaded yet: answer the generic document, do not cache it
            return schema
        app.openapi_schema = describe_models(schema, engines, default_of(), max_instances)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
