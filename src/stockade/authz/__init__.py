"""Authorization: Rego policies evaluated in-process with regorus.

Callers build the input document with :func:`build_input` (from :class:`Resource`,
:class:`Subject` and :class:`Context`) and ask an :class:`Authorizer` to :meth:`~Authorizer.decide`;
the answer is a :class:`Decision` read from ``data.stockade.decision``. Any failure is a deny
with a reason. The bundle is hot-reloaded with an atomic swap, decisions are published to the
bus as folded ``DecisionRecord`` events, and :func:`run_policy_tests` runs a bundle's Rego tests.
"""

from ._api import AuthzAPI
from ._authorizer import Authorizer
from ._decision import Decision
from ._decision_log import DecisionSink
from ._input import Context, Resource, Subject, build_input, parse_input
from ._obligations import ObligationError, Obligations, parse_obligations
from ._testing import (
    CoverageReport,
    FileCoverage,
    PolicyTestResult,
    format_test_results,
    run_policy_tests,
    run_policy_tests_with_coverage,
)

__all__ = [
    "Authorizer",
    "AuthzAPI",
    "Context",
    "CoverageReport",
    "Decision",
    "DecisionSink",
    "FileCoverage",
    "ObligationError",
    "Obligations",
    "PolicyTestResult",
    "Resource",
    "Subject",
    "build_input",
    "format_test_results",
    "parse_input",
    "parse_obligations",
    "run_policy_tests",
    "run_policy_tests_with_coverage",
]
