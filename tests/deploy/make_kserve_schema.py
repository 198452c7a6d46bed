"""Regenerate kserve_v1beta1_schema.json from a KServe Python SDK wheel (not run by the tests).

The test checks deploy/kubernetes/kserve/inferenceservice.yaml against the fields KServe's InferenceService
defines. kubernetes-validate knows no CRDs, and the SDK itself is too heavy to install for a test (it pulls in
pandas, grpcio, the kubernetes client and more), so the fields are read from the SDK's generated models
(``kserve/models/*.py``: ``openapi_types``, ``attribute_map`` and the setters that refuse ``None``), which
openapi-generator produces from the same Go types as the CRD, and stored here as JSON. The models are parsed,
never imported. Kubernetes types (``V1Container``, ``V1Probe``, ...) stay names: the test validates them against
kubernetes-validate's core schemas.

    pip download --no-deps kserve==0.21.0
    python tests/deploy/make_kserve_schema.py kserve-0.21.0-py3-none-any.whl > tests/deploy/kserve_v1beta1_schema.json

The SDK is Apache-2.0, (c) The KServe Authors; the JSON is a derived excerpt of it (field names and types only).
"""

from __future__ import annotations

import ast
import json
import re
import sys
import zipfile
from pathlib import PurePosixPath

ROOT = "V1beta1InferenceService"
REQUIRED = re.compile(r"client_side_validation and (\w+) is None")


def _dict_literal(node: ast.ClassDef, name: str) -> dict[str, str]:
    for statement in node.body:
        if isinstance(statement, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == name for target in statement.targets
        ):
            return ast.literal_eval(statement.value)
    raise ValueError(f"{node.name} has no {name}")


def _models(wheel: zipfile.ZipFile) -> dict[str, dict[str, object]]:
    """Every generated model class: {class: {"fields": {json key: SDK type}, "required": [json keys]}}."""
    models: dict[str, dict[str, object]] = {}
    for name in wheel.namelist():
        path = PurePosixPath(name)
        if path.parent != PurePosixPath("kserve/models") or path.name == "__init__.py" or path.suffix != ".py":
            continue
        source = wheel.read(name).decode()
        for node in ast.parse(source).body:
            if not isinstance(node, ast.ClassDef):
                continue
            types = _dict_literal(node, "openapi_types")
            keys = _dict_literal(node, "attribute_map")
            required = sorted(
                keys[attribute] for attribute in set(REQUIRED.findall(ast.get_source_segment(source, node) or ""))
            )
            models[node.name] = {
                "fields": {keys[a]: t for a, t in sorted(types.items(), key=lambda i: keys[i[0]])},
                "required": required,
            }
    return models


def _referenced(sdk_type: str) -> list[str]:
    """The class names inside an SDK type string: 'list[V1Container]', 'dict(str, V1beta1Batcher)', ..."""
    return re.findall(r"[A-Z]\w*", sdk_type)


def main(wheel_path: str) -> None:
    with zipfile.ZipFile(wheel_path) as wheel:
        models = _models(wheel)
        version = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        sdk = wheel.read(version).decode()
    sdk_version = re.search(r"^Version: (.+)$", sdk, re.M)
    # Only what an InferenceService can hold; the status is written by the controller, never by a manifest.
    keep: dict[str, dict[str, object]] = {}
    pending = [ROOT]
    while pending:
        name = pending.pop()
        if name in keep or name not in models:
            continue
        model = models[name]
        if name == ROOT:
            model = {**model, "fields": {k: v for k, v in model["fields"].items() if k != "status"}}  # type: ignore[attr-defined]
        keep[name] = model
        for sdk_type in model["fields"].values():  # type: ignore[attr-defined]
            pending.extend(_referenced(sdk_type))
    document = {
        "$comment": "Derived from the KServe Python SDK's generated models (kserve/models/*.py), Apache-2.0, "
        "(c) The KServe Authors, https://github.com/kserve/kserve/tree/master/python/kserve. Field names "
        "(JSON keys) and SDK types of the types an InferenceService holds, and the fields the SDK requires; "
        "status omitted. Other names (V1Container, ...) are Kubernetes types. Regenerate with "
        "tests/deploy/make_kserve_schema.py.",
        "sdk": {"package": "kserve", "version": sdk_version.group(1) if sdk_version else "unknown"},
        "root": ROOT,
        "types": dict(sorted(keep.items())),
    }
    json.dump(document, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
