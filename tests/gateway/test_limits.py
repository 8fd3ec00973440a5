from __future__ import annotations

import pytest

from stockade.gateway._limits import Admission, ConnectionLimits


def test_total_and_per_source_caps() -> None:
    limits = ConnectionLimits(max_total=3, max_per_source=2)
    assert limits.admit("10.0.0.1") is Admission.ADMITTED
    assert limits.admit("10.0.0.1") is Admission.ADMITTED
    assert limits.admit("10.0.0.1") is Admission.TOO_MANY_FROM_SOURCE
    assert limits.admit("10.0.0.2") is Admission.ADMITTED
    assert limits.admit("10.0.0.3") is Admission.TOO_MANY_CONNECTIONS
    limits.release("10.0.0.1")
    assert limits.count("10.0.0.1") == 1
    assert limits.admit("10.0.0.3") is Admission.ADMITTED
    assert limits.total == 3


def test_release_without_admit_is_an_error() -> None:
    limits = ConnectionLimits(max_total=1, max_per_source=1)
    with pytest.raises(ValueError, match="without a matching admit"):
        limits.release("10.0.0.1")


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ConnectionLimits(max_total=0, max_per_source=1)
