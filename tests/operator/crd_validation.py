"""Check a manifest against the LLMServer CRD the way the API server would, offline:
structural defaults, then the openAPIV3Schema (jsonschema, Draft 4: Kubernetes'
OpenAPI v3.0 dialect, boolean exclusiveMinimum), then every x-kubernetes-validations
CEL rule (cel-python).

Kubernetes-only CEL: the rules in crds/llmserver.yaml deliberately use only standard
CEL (has, size, matches, startsWith, contains, exists, all, ternaries), which cel-python
implements. Kubernetes' extension libraries (quantity(), url(), the k8s list/string
extensions, isSorted…) and transition rules (``oldSelf``) are NOT available here:
a rule using one makes ``check`` raise instead of silently passing, so adding such a
rule forces a decision about how to test it. Kubernetes also evaluates ``number``
fields as CEL doubles even when the YAML holds an integer; ``_to_cel`` does the same.
"""

from __future__ import annotations

from typing import Any

import celpy
import jsonschema

from trail_operator.crd import apply_defaults, openapi_schema

K8S_ONLY = ("oldSelf", "quantity(", "url(", "isSorted(", "indexOf(", "split(", "lowerAscii(", "format(")


def _numbers_as_schema(schema: dict[str, Any], value: Any) -> Any:
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else {}
        return {k: _numbers_as_schema(props.get(k, extra), v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers_as_schema(schema.get("items", {}), v) for v in value]
    return value


def _cel_errors(schema: dict[str, Any], value: Any, path: str) -> list[str]:
    errors = []
    for rule in schema.get("x-kubernetes-validations", []):
        expr = rule["rule"]
        if any(token in expr for token in K8S_ONLY):
            raise NotImplementedError(f"{path}: rule uses a Kubernetes-only CEL feature: {expr}")
        env = celpy.Environment()
        program = env.program(env.compile(expr))
        result = program.evaluate({"self": celpy.json_to_cel(_numbers_as_schema(schema, value))})
        if isinstance(result, celpy.CELEvalError):
            raise RuntimeError(f"{path}: CEL rule failed to evaluate: {expr}: {result}")
        if not bool(result):
            errors.append(f"{path}: {rule.get('message', expr)}")
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                errors += _cel_errors(sub, value[key], f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            errors += _cel_errors(schema["items"], item, f"{path}[{i}]")
    return errors


def check(manifest: dict[str, Any]) -> list[str]:
    """All reasons the API server would reject ``manifest`` (empty: accepted)."""
    schema = openapi_schema()
    # NaN/Infinity cannot even reach a real API server (JSON has no such numbers); here
    # they pass jsonschema's comparisons and the CEL range rule on c rejects them.
    obj = apply_defaults(schema, manifest)
    validator = jsonschema.Draft4Validator(schema)
    errors = [
        f"{'.'.join(str(p) for p in error.absolute_path)}: {error.validator}: {error.message}"
        for error in validator.iter_errors(obj)
    ]
    if errors:
        return errors  # like the API server: CEL rules run only on schema-valid objects
    return _cel_errors(schema, obj, "")


def pruned(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """The fields of ``value`` the API server would drop as unknown (structural pruning): a
    field the operator writes that the CRD does not declare vanishes without an error."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(value, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        dropped = []
        for key, sub in value.items():
            declared = props.get(key, extra if isinstance(extra, dict) else None)
            dropped += [f"{path}.{key}"] if declared is None else pruned(declared, sub, f"{path}.{key}")
        return dropped
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [field for i, item in enumerate(value) for field in pruned(schema["items"], item, f"{path}[{i}]")]
    return []
