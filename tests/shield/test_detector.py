"""The detector without I/O: windows, weights, enumeration, allowlist, escalation, dedupe."""

from __future__ import annotations

import ipaddress

import pytest

from stockade.core.errors import InvalidInput
from stockade.core.settings import ShieldSettings
from stockade.shield import Ban, Detector, Failure, Outcome, Rules

RULES = Rules(
    window=60,
    threshold=5,
    schedule=(10, 100, 1000),
    strike_memory=500,
    allowlist=(ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.9.0.0/16")),
    ipv6_prefix=64,
    enum_usernames=4,
    enum_window=60,
    weights={"unknown_user": 2.0, "noise": 0.0},
)


class Run:
    """Feeds failures through decide + commit, storing bans in a dict like the shield does."""

    def __init__(self, rules: Rules = RULES) -> None:
        self.detector = Detector(rules)
        self.bans: dict[str, Ban] = {}
        self.seq = 0

    def fail(self, ip: str, at: float, user: str = "root", reason: str = "bad_key") -> Outcome:
        self.seq += 1
        verdict = self.detector.decide(Failure(self.seq, at, ip, user, reason), self.bans.get)
        if verdict.ban is not None:
            self.bans[verdict.source] = verdict.ban
        self.detector.commit(verdict)
        return verdict.outcome


def test_threshold_within_window_bans() -> None:
    run = Run()
    outcomes = [run.fail("203.0.113.1", at=float(i)) for i in range(5)]
    assert outcomes == [Outcome.COUNTED] * 4 + [Outcome.BANNED]
    ban = run.bans["203.0.113.1"]
    assert (ban.strikes, ban.until, ban.trigger_seq) == (1, 14.0, 5)
    assert ban.reason.startswith("brute-force")


def test_failures_spread_beyond_window_do_not_ban() -> None:
    run = Run()
    outcomes = [run.fail("203.0.113.2", at=i * 20.0) for i in range(20)]
    assert Outcome.BANNED not in outcomes


def test_weights_per_reason() -> None:
    run = Run()
    assert run.fail("203.0.113.3", 0, reason="unknown_user") is Outcome.COUNTED
    assert run.fail("203.0.113.3", 1, reason="unknown_user") is Outcome.COUNTED
    assert run.fail("203.0.113.3", 2, reason="unknown_user") is Outcome.BANNED
    for i in range(20):
        assert run.fail("203.0.113.4", i, reason="noise") is not Outcome.BANNED


def test_allowlisted_never_banned() -> None:
    run = Run()
    outcomes = {run.fail(ip, at=i / 10) for i in range(500) for ip in ("127.0.0.1", "10.9.3.4")}
    assert outcomes == {Outcome.ALLOWLISTED}
    assert run.bans == {}


def test_default_allowlist_is_only_exact_loopback() -> None:
    run = Run(Rules.from_settings(ShieldSettings(threshold=2)))
    assert run.fail("127.0.0.1", 0) is Outcome.ALLOWLISTED
    assert run.fail("::1", 0) is Outcome.ALLOWLISTED
    run.fail("127.0.0.2", 0)
    assert run.fail("127.0.0.2", 1) is Outcome.BANNED


def test_user_enumeration_fires_below_threshold() -> None:
    run = Run()
    outcomes = [run.fail("203.0.113.5", i, user=f"user{i}") for i in range(4)]
    assert outcomes[-1] is Outcome.BANNED  # 4 distinct usernames, only 4 < 5 failures
    assert run.bans["203.0.113.5"].reason.startswith("user-enumeration")


def test_same_username_does_not_count_as_enumeration() -> None:
    rules = Rules(threshold=100, enum_usernames=3, window=60, enum_window=60)
    run = Run(rules)
    assert {run.fail("203.0.113.6", i, user="admin") for i in range(30)} == {Outcome.COUNTED}


def test_ipv6_grouped_by_prefix() -> None:
    run = Run()
    for i in range(4):
        run.fail(f"2001:db8:1:2::{i + 1}", float(i))
    assert run.fail("2001:db8:1:2:ffff::9", 5.0) is Outcome.BANNED
    assert list(run.bans) == ["2001:db8:1:2::/64"]


def test_banned_source_not_counted_and_escalates_after_expiry() -> None:
    run = Run()
    for i in range(5):
        run.fail("203.0.113.7", float(i))
    assert run.fail("203.0.113.7", 5.0) is Outcome.ALREADY_BANNED
    for i in range(5):
        outcome = run.fail("203.0.113.7", 20.0 + i)
    assert outcome is Outcome.BANNED
    second = run.bans["203.0.113.7"]
    assert (second.strikes, second.until - second.banned_at) == (2, 100)
    for i in range(5):  # long after strike memory: back to the first strike
        run.fail("203.0.113.7", 5000.0 + i)
    assert run.bans["203.0.113.7"].strikes == 1


def test_schedule_repeats_last_entry() -> None:
    assert [RULES.ban_length(n) for n in (1, 2, 3, 4, 9)] == [10, 100, 1000, 1000, 1000]


def test_decide_changes_nothing_until_commit() -> None:
    detector = Detector(RULES)
    failures = [Failure(i, float(i), "203.0.113.8", "u", "x") for i in range(1, 6)]
    for failure in failures[:4]:
        detector.commit(detector.decide(failure, {}.get))
    verdict = detector.decide(failures[4], {}.get)
    again = detector.decide(failures[4], {}.get)  # e.g. the store failed; redelivered
    assert verdict.outcome is again.outcome is Outcome.BANNED
    detector.commit(verdict)
    assert detector.decide(failures[4], {}.get).outcome is Outcome.DUPLICATE


def test_events_before_last_trigger_are_ignored() -> None:
    detector = Detector(RULES)
    old = Ban("203.0.113.9", until=10, strikes=1, reason="x", banned_at=0, trigger_seq=50)
    verdict = detector.decide(Failure(40, 100.0, "203.0.113.9", "u", "x"), {old.source: old}.get)
    assert verdict.outcome is Outcome.IGNORED


def test_bad_address_is_invalid_input() -> None:
    with pytest.raises(InvalidInput):
        Detector(RULES).decide(Failure(1, 0, "not-an-ip", "u", "x"), {}.get)


def test_ipv6_group_overlapping_allowlist_bans_only_the_address() -> None:
    rules = Rules(threshold=2, allowlist=(ipaddress.ip_network("2001:db8::1/128"),))
    run = Run(rules)
    run.fail("2001:db8::2", 0)
    assert run.fail("2001:db8::2", 1) is Outcome.BANNED
    assert list(run.bans) == ["2001:db8::2"]
    assert run.fail("2001:db8::1", 2) is Outcome.ALLOWLISTED
