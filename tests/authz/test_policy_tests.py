"""The Rego test runner behind ``stockade policy test``: OPA-style outcomes and report."""

from __future__ import annotations

from pathlib import Path

import pytest

from stockade.authz import format_test_results, run_policy_tests
from stockade.core.errors import PolicyError

from .conftest import HEADER, write_bundle

POLICY = HEADER + 'decision := {"allow": input.ok == true}\n'
TESTS = """package stockade_test

import rego.v1

import data.stockade

test_allows if {
\tstockade.decision.allow with input as {"ok": true}
}

test_denies_wrongly if {
\td := stockade.decision with input as {"ok": false}
\tprint("decision was", d)
\td.allow
}

test_undefined if input.missing == 1

test_error if {
\tstockade.decision with input as {"ok": true}
\t1 / count([]) == 1
}

helper := 1

test_fn(x) := x
"""


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return write_bundle(tmp_path, {"policy.rego": POLICY, "policy_test.rego": TESTS})


def test_outcomes(bundle: Path) -> None:
    results = run_policy_tests(bundle)
    test_file = f"{bundle}/policy_test.rego"
    summary = [(r.name, r.file, r.line, r.outcome) for r in results]
    assert summary == [
        ("data.stockade_test.test_allows", test_file, 7, "pass"),
        ("data.stockade_test.test_denies_wrongly", test_file, 11, "fail"),
        ("data.stockade_test.test_undefined", test_file, 17, "fail"),
        ("data.stockade_test.test_error", test_file, 19, "error"),
    ]
    passed, wrong, undefined, error = results
    assert passed.passed
    assert not wrong.passed
    assert wrong.output == (f'{test_file}:13: decision was {{"allow": false}}',)
    assert undefined.message == "undefined"
    assert error.message == f"{test_file}:21: divide by zero"
    assert all(r.duration >= 0 for r in results)


def test_report_lists_failures_then_counts(bundle: Path) -> None:
    report = format_test_results(run_policy_tests(bundle))
    lines = report.splitlines()
    assert lines[0] == f"{bundle}/policy_test.rego:"
    assert lines[1].startswith("data.stockade_test.test_denies_wrongly: FAIL (")
    assert f'  {bundle}/policy_test.rego:13: decision was {{"allow": false}}' in lines
    assert "test_allows" not in report
    assert lines[-4] == "-" * 80
    assert lines[-3:] == ["PASS: 1/4", "FAIL: 2/4", "ERROR: 1/4"]


def test_verbose_report_lists_every_test(bundle: Path) -> None:
    report = format_test_results(run_policy_tests(bundle), verbose=True)
    assert "data.stockade_test.test_allows: PASS (" in report


def test_all_passing_report(tmp_path: Path) -> None:
    write_bundle(tmp_path, {"p.rego": "package p\n\nimport rego.v1\n\ntest_ok if true\n"})
    assert format_test_results(run_policy_tests(tmp_path)) == "PASS: 1/1"


def test_no_tests(tmp_path: Path) -> None:
    write_bundle(tmp_path, {"p.rego": POLICY})
    results = run_policy_tests(tmp_path)
    assert results == []
    assert format_test_results(results) == "no tests found"


def test_bundle_that_does_not_compile(tmp_path: Path) -> None:
    write_bundle(tmp_path, {"p.rego": POLICY, "p_test.rego": "package t\n\ntest_x if {\n"})
    with pytest.raises(PolicyError) as caught:
        run_policy_tests(tmp_path)
    assert caught.value.location == f"{tmp_path}/p_test.rego:4"
    assert caught.value.exit_code == 2
