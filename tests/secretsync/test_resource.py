"""VaultSecret parsing: bad fields are named; templates render or fail with a reason."""

from __future__ import annotations

from typing import Any

import pytest

from stockade.core import InvalidInput
from stockade.secretsync import VaultSecret, render
from stockade.secretsync._controller import TemplateError


def _obj(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"mount": "secret", "path": "db", "type": "kv-v2",
                            "destination": {"name": "db"}}  # fmt: skip
    body.update(spec)
    return {"metadata": {"name": "db", "namespace": "apps"}, "spec": body}


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"type": "kv-v3"}, "spec.type"),
        ({"refreshAfter": "soon"}, "spec.refreshAfter"),
        ({"refreshPolicy": "Always"}, "spec.refreshPolicy"),
        ({"destination": {"name": "Bad_Name"}}, "spec.destination.name"),
        ({"destination": {"name": "db", "colour": "red"}}, "spec.destination.colour"),
        ({"rolloutRestartTargets": [{"kind": "Pod", "name": "x"}]}, "spec.rolloutRestartTargets"),
        ({"path": "/abs"}, "spec.path"),
        ({"version": -1}, "spec.version"),
    ],
)
def test_bad_fields_named(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput, match=field.replace(".", r"\.")):
        VaultSecret.from_object(_obj(**spec))


def test_defaults() -> None:
    vs = VaultSecret.from_object(_obj())
    assert vs.spec.refresh_policy == "Periodic"
    assert vs.spec.hmac_secret_data is True
    assert vs.spec.destination.create is False
    assert vs.spec.refresh_interval.total_seconds() == 60


def test_unsupported_template_action_refused() -> None:
    templates = {"x": {"text": "{{ range .Secrets }}{{ . }}{{ end }}"}}
    vs = VaultSecret.from_object(
        _obj(destination={"name": "db", "transformation": {"templates": templates}})
    )
    with pytest.raises(TemplateError) as caught:
        render(vs, {"a": "b"})
    assert caught.value.reason == "TemplateInvalid"
