"""The Pod Security checker against every upstream conformance fixture of both levels.

Each ``fail`` fixture must be rejected by the check its file name names (upstream names them
after the check id, lower-cased, numbered); at ``restricted``, the baseline checks that a
restricted check replaces are reported under the replacing id, as upstream does. Some fixtures
fail a second check too (a Windows hostProcess Pod needs hostNetwork): the named one must be
among them. Every ``pass`` fixture must pass.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from stockade.workspace import CHECKS, check_object

from .conftest import shared_testdata

FIXTURES = shared_testdata() / "pod-security" / "test" / "testdata"
REPLACED_AT_RESTRICTED = {
    CHECKS[cid][2].lower(): cid.lower()  # type: ignore[union-attr]
    for cid in CHECKS
    if CHECKS[cid][2] is not None
}


def _fixtures(outcome: str) -> list[Any]:
    return [
        pytest.param(level, path, id=f"{level}-{path.stem}")
        for level in ("baseline", "restricted")
        for path in sorted((FIXTURES / level / "v1.35" / outcome).glob("*.yaml"))
    ]


def test_fixture_counts() -> None:
    """The README's counts: nothing silently missing from the parametrized lists."""
    assert len(list((FIXTURES / "restricted/v1.35/pass").glob("*.yaml"))) == 23
    assert len(list((FIXTURES / "restricted/v1.35/fail").glob("*.yaml"))) == 76
    assert len(_fixtures("fail")) + len(_fixtures("pass")) == 148


@pytest.mark.parametrize(("level", "path"), _fixtures("pass"))
def test_pass_fixtures_pass(level: str, path: Path) -> None:
    assert check_object(yaml.safe_load(path.read_text()), level) == []  # type: ignore[arg-type]


@pytest.mark.parametrize(("level", "path"), _fixtures("fail"))
def test_fail_fixtures_fail_the_named_check(level: str, path: Path) -> None:
    named = re.sub(r"\d+$", "", path.stem)
    if level == "restricted":
        named = REPLACED_AT_RESTRICTED.get(named, named)
    found = {v.check.lower() for v in check_object(yaml.safe_load(path.read_text()), level)}  # type: ignore[arg-type]
    assert named in found


def test_every_check_is_exercised_by_a_fixture() -> None:
    names = {re.sub(r"\d+$", "", p.values[1].stem) for p in _fixtures("fail")}
    assert {cid.lower() for cid in CHECKS} <= names


def test_a_baseline_pod_fails_restricted_but_passes_baseline() -> None:
    pod = yaml.safe_load((FIXTURES / "baseline/v1.35/pass/base.yaml").read_text())
    assert check_object(pod, "baseline") == []
    failed = {v.check for v in check_object(pod, "restricted")}
    assert {"allowPrivilegeEscalation", "runAsNonRoot", "seccompProfile_restricted"} <= failed


def test_workload_templates_are_checked_and_malformed_pods_fail() -> None:
    deployment = {
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {"template": {"spec": {"hostPID": True, "containers": [{"name": "c"}]}}},
    }
    assert [v.check for v in check_object(deployment, "baseline")] == ["hostNamespaces"]
    assert check_object({"kind": "ConfigMap", "metadata": {"name": "x"}}, "restricted") == []
    broken = check_object({"kind": "Pod", "metadata": {"name": "p"}, "spec": {}}, "baseline")
    assert [v.check for v in broken] == ["object"]
