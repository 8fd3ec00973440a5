"""Rego unit tests, OPA style: every rule named ``test_*`` in a bundle's packages.

A test passes when its rule evaluates to ``true``; ``false`` or undefined is a failure, an
evaluation error is an error. Each test runs on its own clone of the compiled bundle with no
input (tests supply one with ``with input as ...``); ``print()`` output is kept per test.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import regorus

from ._bundle import DEFAULT_BUNDLE_DIR, read_bundle
from ._engine import compile_engine, describe_error

__all__ = [
    "CoverageReport",
    "FileCoverage",
    "PolicyTestResult",
    "format_test_results",
    "run_policy_tests",
    "run_policy_tests_with_coverage",
]

Outcome = Literal["pass", "fail", "error"]
_RULE_PREFIX = "test_"
_RULER = "-" * 80


@dataclass(frozen=True, slots=True)
class PolicyTestResult:
    """One ``test_*`` rule's outcome. ``name`` is its full path (``data.pkg.test_x``)."""

    name: str
    file: str
    line: int
    outcome: Outcome
    duration: float
    """Seconds the evaluation took."""
    message: str = ""
    """Why it failed or errored."""
    output: tuple[str, ...] = ()
    """Lines the test ``print()``-ed."""

    @property
    def passed(self) -> bool:
        return self.outcome == "pass"


def _ref_name(refr: dict[str, Any]) -> str | None:
    """``a.b.c`` from a regorus AST reference made of ``Var`` and ``RefDot`` nodes."""
    kind, node = next(iter(refr.items()))
    if kind == "Var":
        return str(node["value"])
    if kind == "RefDot":
        base = _ref_name(node["refr"])
        return None if base is None else f"{base}.{node['field'][1]}"
    return None


def _discover(engine: regorus.Engine) -> Iterator[tuple[str, str, int]]:
    """``(rule path, file, line)`` for each complete rule named ``test_*``, first definition."""
    seen: set[str] = set()
    for module in json.loads(engine.get_ast_as_json()):
        ast = module["ast"]
        package = _ref_name(ast["package"]["refr"])
        for rule in ast["rules"]:
            head = rule.get("Spec", {}).get("head", {}).get("Compr")
            if head is None:
                continue
            name = _ref_name(head["refr"])
            if name is None or not name.startswith(_RULE_PREFIX):
                continue
            path = f"data.{package}.{name}"
            if path not in seen:
                seen.add(path)
                yield path, module["source"]["file"], int(head["span"]["line"])


@dataclass(frozen=True, slots=True)
class FileCoverage:
    """Lines of one policy file that the tests evaluated (``covered``) or could have and did
    not (``not_covered``); lines that evaluate nothing (comments, braces) are in neither."""

    covered: tuple[int, ...]
    not_covered: tuple[int, ...]

    @property
    def percent(self) -> float:
        total = len(self.covered) + len(self.not_covered)
        return 100.0 * len(self.covered) / total if total else 100.0


def _ranges(lines: Sequence[int]) -> list[dict[str, dict[str, int]]]:
    out: list[dict[str, dict[str, int]]] = []
    for line in sorted(lines):
        if out and out[-1]["end"]["row"] == line - 1:
            out[-1]["end"]["row"] = line
        else:
            out.append({"start": {"row": line}, "end": {"row": line}})
    return out


@dataclass(frozen=True, slots=True)
class CoverageReport:
    """Coverage of a bundle's policy files (``*_test.rego`` excluded) by its tests."""

    files: dict[str, FileCoverage]

    @property
    def percent(self) -> float:
        covered = sum(len(f.covered) for f in self.files.values())
        total = covered + sum(len(f.not_covered) for f in self.files.values())
        return 100.0 * covered / total if total else 100.0

    def to_dict(self) -> dict[str, Any]:
        """OPA's ``opa test --coverage`` JSON: row ranges, line counts and percentages."""
        return {
            "files": {
                path: {
                    "covered": _ranges(f.covered),
                    "not_covered": _ranges(f.not_covered),
                    "covered_lines": len(f.covered),
                    "not_covered_lines": len(f.not_covered),
                    "coverage": round(f.percent, 2),
                }
                for path, f in sorted(self.files.items())
            },
            "covered_lines": sum(len(f.covered) for f in self.files.values()),
            "not_covered_lines": sum(len(f.not_covered) for f in self.files.values()),
            "coverage": round(self.percent, 2),
        }


def _merge_coverage(
    engine: regorus.Engine, covered: dict[str, set[int]], seen: dict[str, set[int]]
) -> None:
    report = json.loads(engine.get_coverage_report_as_json())
    for entry in report.get("files", []):
        path = str(entry["path"])
        covered.setdefault(path, set()).update(int(n) for n in entry.get("covered", []))
        seen.setdefault(path, set()).update(int(n) for n in entry.get("not_covered", []))


def run_policy_tests(bundle_dir: Path | None = None) -> list[PolicyTestResult]:
    """Run every ``test_*`` rule of the bundle (default: the shipped one), by file and line.

    Raises :class:`~stockade.core.errors.PolicyError` (``file:line``) when the bundle does not
    compile.
    """
    return _run(bundle_dir, None)


def run_policy_tests_with_coverage(
    bundle_dir: Path | None = None,
) -> tuple[list[PolicyTestResult], CoverageReport]:
    """:func:`run_policy_tests`, also recording which lines of each policy file the tests hit."""
    covered: dict[str, set[int]] = {}
    seen: dict[str, set[int]] = {}
    results = _run(bundle_dir, (covered, seen))
    files = {
        path: FileCoverage(
            covered=tuple(sorted(covered.get(path, set()))),
            not_covered=tuple(sorted(lines - covered.get(path, set()))),
        )
        for path, lines in seen.items()
        if not path.endswith("_test.rego")
    }
    for path, lines in covered.items():
        if path not in files and not path.endswith("_test.rego"):
            files[path] = FileCoverage(covered=tuple(sorted(lines)), not_covered=())
    return results, CoverageReport(files=files)


def _run(
    bundle_dir: Path | None, coverage: tuple[dict[str, set[int]], dict[str, set[int]]] | None
) -> list[PolicyTestResult]:
    compiled = compile_engine(read_bundle(bundle_dir or DEFAULT_BUNDLE_DIR))
    results = []
    for path, file, line in sorted(_discover(compiled), key=lambda t: (t[1], t[2])):
        engine: regorus.Engine = compiled.clone()  # type: ignore[attr-defined]  # not in the .pyi
        engine.set_gather_prints(True)
        if coverage is not None:
            engine.set_enable_coverage(True)
        started = time.perf_counter()
        try:
            value = engine.eval_rule(path)
        except Exception as exc:
            message, location = describe_error(exc)
            outcome: Outcome = "error"
            message = f"{location}: {message}" if location else message
        else:
            outcome = "pass" if value is True else "fail"
            message = "" if value is True else ("undefined" if value is None else repr(value))
        duration = time.perf_counter() - started
        if coverage is not None:
            _merge_coverage(engine, *coverage)
        results.append(
            PolicyTestResult(
                name=path,
                file=file,
                line=line,
                outcome=outcome,
                duration=duration,
                message=message,
                output=tuple(engine.take_prints()),
            )
        )
    return results


def _duration(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3f}s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f}ms"
    return f"{seconds * 1e6:.3f}µs"


def _line(result: PolicyTestResult) -> str:
    text = f"{result.name}: {result.outcome.upper()} ({_duration(result.duration)})"
    return text + (f"\n  {result.message}" if result.message else "")


def format_test_results(results: Sequence[PolicyTestResult], *, verbose: bool = False) -> str:
    """OPA's ``opa test`` report: failures (every test with ``verbose``) grouped by file, then
    the PASS/FAIL/ERROR counts. An empty run says so."""
    if not results:
        return "no tests found"
    total = len(results)
    shown = [r for r in results if verbose or not r.passed]
    lines: list[str] = []
    if shown:
        current = None
        for result in shown:
            if result.file != current:
                if current is not None:
                    lines.append("")
                lines.append(f"{result.file}:")
                current = result.file
            lines.append(_line(result))
            lines.extend(f"  {out}" for out in result.output if verbose or not result.passed)
        lines.append(_RULER)
    for outcome in ("pass", "fail", "error"):
        count = sum(1 for r in results if r.outcome == outcome)
        if count:
            lines.append(f"{outcome.upper()}: {count}/{total}")
    return "\n".join(lines)
