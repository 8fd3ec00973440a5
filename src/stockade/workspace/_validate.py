"""Validation of rendered objects against the real schemas.

Built-in kinds go through ``kubernetes-validate`` in strict mode (unknown fields are errors)
against the Kubernetes 1.35 schemas. ``kubernetes-validate`` only warns on a custom kind, so the
CiliumNetworkPolicy is validated with ``jsonschema`` against the CRD's strict JSON Schema (from
the CRDs catalog; the directory is given by the caller, since the schemas are test data).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stockade.core.errors import InvalidInput

if TYPE_CHECKING:
    import jsonschema

# jsonschema and kubernetes-validate are imported where they are used: together they take
# most of a second to import (jsonschema's format checks build a grammar), which every CLI
# command would otherwise pay.

__all__ = ["KUBERNETES_VERSION", "validate_object"]

KUBERNETES_VERSION = "1.35.0"
#: CRD kinds and the schema file (relative to the schema directory) that describes them.
CRD_SCHEMAS = {
    ("cilium.io/v2", "CiliumNetworkPolicy"): "cilium.io/ciliumnetworkpolicy_v2.json",
    ("cilium.io/v2", "CiliumClusterwideNetworkPolicy"): (
        "cilium.io/ciliumclusterwidenetworkpolicy_v2.json"
    ),
}


def _label(obj: Mapping[str, Any]) -> str:
    name = (
        obj.get("metadata", {}).get("name", "?") if isinstance(obj.get("metadata"), dict) else "?"
    )
    return f"{obj.get('kind', '?')}/{name}"


def _path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "(object)"


def validate_object(obj: Mapping[str, Any], *, crd_schemas: Path | None = None) -> None:
    """Raise :class:`InvalidInput` (naming the object and the field) unless ``obj`` is valid:
    built-in kinds strictly against Kubernetes 1.35, known CRDs against ``crd_schemas``. A custom
    kind with no schema at hand is refused rather than passed unchecked."""
    key = (str(obj.get("apiVersion")), str(obj.get("kind")))
    label = _label(obj)
    if key in CRD_SCHEMAS:
        if crd_schemas is None:
            raise InvalidInput(label, "no CRD schema directory given to validate a custom kind")
        schema_file = crd_schemas / CRD_SCHEMAS[key]
        try:
            schema = json.loads(schema_file.read_text())
        except (OSError, ValueError) as exc:
            raise InvalidInput(str(schema_file), f"cannot read the schema ({exc})") from None
        import jsonschema  # (see the note at the imports)

        validator = jsonschema.Draft7Validator(schema)
        errors = sorted(validator.iter_errors(dict(obj)), key=lambda e: list(e.absolute_path))
        if errors:
            raise InvalidInput(f"{label}: {_path(errors[0])}", errors[0].message)
        return
    import kubernetes_validate  # (see the note at the imports)
    import kubernetes_validate.utils

    try:
        kubernetes_validate.validate(dict(obj), KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.utils.ValidationError as exc:
        raise InvalidInput(f"{label}: {_path(exc)}", exc.message) from None
    except kubernetes_validate.utils.SchemaNotFoundError:
        raise InvalidInput(
            label, f"no Kubernetes {KUBERNETES_VERSION} schema for this kind"
        ) from None
