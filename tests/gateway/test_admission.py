"""Pre-authentication limits: MaxStartups, PerSourceMaxStartups, PerSourcePenalties (pure)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from stockade.core.settings import PreAuthSettings
from stockade.gateway._admission import Outcome, Penalty, PreAuthLimits, Verdict, source_block


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(rng: float | None = None, **overrides: Any) -> tuple[PreAuthLimits, FakeClock]:
    clock = FakeClock()
    settings = PreAuthSettings(**overrides)
    if rng is None:
        return PreAuthLimits(settings=settings, clock=clock), clock
    value = rng
    return PreAuthLimits(settings=settings, clock=clock, rng=lambda: value), clock


def login(limits: PreAuthLimits, ip: str) -> None:
    assert limits.admit(ip) is Verdict.ADMITTED
    limits.authenticated(ip)
    assert limits.closed(ip, Outcome.AUTHENTICATED) is None


def fail_connection(limits: PreAuthLimits, ip: str, outcome: Outcome) -> Penalty | None:
    assert limits.admit(ip) is Verdict.ADMITTED
    return limits.closed(ip, outcome)


# -- defaults never get in an honest user's way ----------------------------------------------


def test_defaults_admit_sequential_logins() -> None:
    limits, clock = make(rng=0.0)  # the worst draw: any early-drop zone would refuse
    for _ in range(500):
        login(limits, "127.0.0.2")
        clock.advance(0.05)
    assert limits.unauthenticated == 0


def test_defaults_admit_32_parallel_logins_then_more() -> None:
    limits, _ = make(rng=0.0)
    for _ in range(3):  # three rounds of 32 at once, one after another
        for _ in range(32):
            assert limits.admit("127.0.0.2") is Verdict.ADMITTED
        assert limits.unauthenticated_from("127.0.0.2") == 32
        for _ in range(32):
            limits.authenticated("127.0.0.2")
        for _ in range(32):
            limits.closed("127.0.0.2", Outcome.AUTHENTICATED)
    assert limits.unauthenticated == 0


def test_a_few_failed_logins_do_not_block_the_33rd_honest_one() -> None:
    """authfail is one penalty per connection that ended failed, however many attempts it made:
    three such connections (3 x 5 s = 15 s, not more than min 15 s) are not enforced."""
    limits, clock = make(rng=0.0)
    ip = "127.0.0.2"
    for _ in range(3):
        # a connection that tried six wrong keys/passwords (MaxAuthTries) still counts once
        assert fail_connection(limits, ip, Outcome.AUTHFAIL) is None
        clock.advance(0.1)
    assert limits.penalized(ip) == 0.0
    for _ in range(32):
        assert limits.admit(ip) is Verdict.ADMITTED
    assert limits.admit(ip) is Verdict.ADMITTED  # the 33rd, concurrently
    for _ in range(33):
        limits.authenticated(ip)
        limits.closed(ip, Outcome.AUTHENTICATED)
    login(limits, ip)


def test_the_fourth_failed_connection_in_a_row_is_enforced() -> None:
    limits, clock = make()
    ip = "198.51.100.7"
    for _ in range(3):
        assert fail_connection(limits, ip, Outcome.AUTHFAIL) is None
    penalty = fail_connection(limits, ip, Outcome.AUTHFAIL)
    assert penalty == Penalty(
        source="198.51.100.7/32", ip=ip, outcome=Outcome.AUTHFAIL, seconds=20.0
    )
    assert limits.admit(ip) is Verdict.PENALIZED
    assert limits.admit("198.51.100.8") is Verdict.ADMITTED  # another source is unaffected
    clock.advance(20.01)
    assert limits.penalized(ip) == 0.0
    assert limits.admit(ip) is Verdict.ADMITTED


def test_four_failed_connections_spread_over_six_seconds_are_not_enforced() -> None:
    limits, clock = make()
    for _ in range(4):  # outstanding after the 4th: 20 s - 6 s = 14 s, not above min
        assert fail_connection(limits, "198.51.100.7", Outcome.AUTHFAIL) is None
        clock.advance(2.0)
    assert limits.admit("198.51.100.7") is Verdict.ADMITTED


def test_failed_logins_spread_out_never_accumulate() -> None:
    limits, clock = make()
    for _ in range(50):
        assert fail_connection(limits, "198.51.100.7", Outcome.AUTHFAIL) is None
        clock.advance(5.1)  # each 5 s penalty expires before the next
    assert limits.tracked(4) == 0
    assert limits.admit("198.51.100.7") is Verdict.ADMITTED


# -- MaxStartups ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_startups", "open_before", "draw", "expected"),
    [
        ("10:30:60", 9, 0.0, Verdict.ADMITTED),  # below start: never dropped
        ("10:30:60", 10, 0.2999, Verdict.EARLY_DROP),  # at start: 30 %
        ("10:30:60", 10, 0.30, Verdict.ADMITTED),
        ("10:30:60", 35, 0.6499, Verdict.EARLY_DROP),  # halfway: 65 %
        ("10:30:60", 35, 0.65, Verdict.ADMITTED),
        ("10:30:60", 59, 0.98, Verdict.EARLY_DROP),  # 98.6 %
        ("10:30:60", 60, 0.9999, Verdict.FULL),  # at full: everyone
        ("10:100:60", 10, 0.9999, Verdict.EARLY_DROP),  # rate 100: refused from start on
        ("20", 19, 0.0, Verdict.ADMITTED),  # N alone is N:100:N
        ("20", 20, 0.9999, Verdict.FULL),
    ],
)
def test_max_startups(max_startups: str, open_before: int, draw: float, expected: Verdict) -> None:
    draws = [1.0]  # 1.0 is never below a probability: fill up without early drops
    limits = PreAuthLimits(
        settings=PreAuthSettings(max_startups=max_startups, per_source_max_startups=None),
        clock=FakeClock(),
        rng=lambda: draws[0],
    )
    for i in range(open_before):
        assert limits.admit(f"10.0.{i // 250}.{i % 250 + 1}") is Verdict.ADMITTED
    draws[0] = draw
    assert limits.admit("192.0.2.1") is expected


@pytest.mark.parametrize(
    ("n", "probability"),
    [(0, 0.0), (9, 0.0), (10, 0.30), (35, 0.65), (60, 1.0), (1000, 1.0)],
)
def test_drop_probability_values(n: int, probability: float) -> None:
    limits, _ = make(max_startups="10:30:60")
    assert limits.drop_probability(n) == pytest.approx(probability)


def test_random_early_drop_follows_the_curve_with_a_seeded_rng() -> None:
    """With n unauthenticated connections held open, the share refused is p(n), linear from
    rate at start to 100 % at full."""
    rng = random.Random(20261201)
    limits = PreAuthLimits(
        settings=PreAuthSettings(
            max_startups="20:30:120", per_source_max_startups=None, penalties=False
        ),
        clock=FakeClock(),
        rng=rng.random,
    )
    held = 0
    observed: dict[int, float] = {}
    for target in range(20, 120, 10):
        while held < target:  # raise the number of open unauthenticated connections
            if limits.admit(f"10.1.{held // 200}.{held % 200 + 1}") is Verdict.ADMITTED:
                held += 1
        trials, dropped = 4000, 0
        for _ in range(trials):
            verdict = limits.admit("192.0.2.99")
            if verdict is Verdict.ADMITTED:
                limits.closed("192.0.2.99", Outcome.NOAUTH)
            else:
                assert verdict is Verdict.EARLY_DROP
                dropped += 1
        observed[target] = dropped / trials
        assert limits.unauthenticated == held
    for n, share in observed.items():
        expected = 0.30 + 0.70 * (n - 20) / 100
        assert share == pytest.approx(expected, abs=0.03), (n, share, expected)
    shares = [observed[n] for n in sorted(observed)]
    assert shares == sorted(shares)


# -- PerSourceMaxStartups and blocks -------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "v4", "v6", "block"),
    [
        ("192.0.2.77", 32, 64, "192.0.2.77/32"),
        ("192.0.2.77", 24, 64, "192.0.2.0/24"),
        ("::ffff:192.0.2.77", 32, 64, "192.0.2.77/32"),  # dual-stack listeners see these
        ("2001:db8:1:2:3:4:5:6", 32, 64, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:3:4:5:6", 32, 48, "2001:db8:1::/48"),
        ("2001:db8:1:2:3:4:5:6", 32, 128, "2001:db8:1:2:3:4:5:6/128"),
        ("fe80::1%eth0", 32, 64, "fe80::/64"),
    ],
)
def test_source_blocks(ip: str, v4: int, v6: int, block: str) -> None:
    assert source_block(ip, ipv4_prefix=v4, ipv6_prefix=v6) == block


def test_per_source_limit_counts_ipv6_by_prefix() -> None:
    limits, _ = make(per_source_max_startups=2)
    assert limits.admit("2001:db8::1") is Verdict.ADMITTED
    assert limits.admit("2001:db8::ffff:1") is Verdict.ADMITTED  # same /64
    assert limits.admit("2001:db8::dead:beef") is Verdict.SOURCE_LIMIT
    assert limits.admit("2001:db8:0:1::1") is Verdict.ADMITTED  # the next /64
    assert limits.unauthenticated_from("2001:db8::42") == 2
    limits.authenticated("2001:db8::1")  # authenticated ones stop counting
    assert limits.admit("2001:db8::dead:beef") is Verdict.ADMITTED


def test_per_source_limit_ipv4_mapped_counts_as_ipv4() -> None:
    limits, _ = make(per_source_max_startups=1)
    assert limits.admit("10.0.0.1") is Verdict.ADMITTED
    assert limits.admit("::ffff:10.0.0.1") is Verdict.SOURCE_LIMIT
    limits.closed("::ffff:10.0.0.1", Outcome.NOAUTH)  # the same address, either spelling
    assert limits.unauthenticated == 0


def test_per_source_limit_by_ipv4_block() -> None:
    limits, _ = make(per_source_max_startups=1, per_source_net_block_size="24:64")
    assert limits.admit("10.0.0.1") is Verdict.ADMITTED
    assert limits.admit("10.0.0.2") is Verdict.SOURCE_LIMIT
    assert limits.admit("10.0.1.1") is Verdict.ADMITTED


# -- PerSourcePenalties --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "closes_to_activate", "seconds"),
    [
        (Outcome.CRASH, 1, 90.0),  # 90 s > min at once
        (Outcome.GRACE_EXCEEDED, 2, 20.0),  # 10 + 10
        (Outcome.AUTHFAIL, 4, 20.0),  # 5 x 4
        (Outcome.NOAUTH, 16, 16.0),  # 1 x 16
    ],
)
def test_penalties_activate_once_above_min(
    outcome: Outcome, closes_to_activate: int, seconds: float
) -> None:
    limits, _ = make()
    ip = "203.0.113.5"
    for _ in range(closes_to_activate - 1):
        assert fail_connection(limits, ip, outcome) is None
        assert limits.penalized(ip) == 0.0
    penalty = fail_connection(limits, ip, outcome)
    assert penalty is not None
    assert penalty.outcome is outcome
    assert penalty.seconds == pytest.approx(seconds)
    assert limits.admit(ip) is Verdict.PENALIZED
    assert limits.penalized(ip) == pytest.approx(seconds)


def test_authenticated_connections_carry_no_penalty() -> None:
    limits, _ = make()
    for _ in range(200):
        login(limits, "203.0.113.5")
    assert limits.tracked(4) == 0


def test_penalty_grows_up_to_max_then_expires() -> None:
    limits, clock = make(penalty_max=120.0)
    ip = "203.0.113.9"
    open_before = [limits.admit(ip) for _ in range(4)]
    assert open_before == [Verdict.ADMITTED] * 4
    assert limits.closed(ip, Outcome.CRASH) is not None  # 90 s, enforced at once
    assert limits.admit(ip) is Verdict.PENALIZED
    # connections admitted before the penalty go on; their ends add up, capped at max
    limits.authenticated(ip)
    assert limits.closed(ip, Outcome.CRASH) is None  # 180 s capped at 120 s
    assert limits.penalized(ip) == pytest.approx(120.0)
    clock.advance(30)
    assert limits.closed(ip, Outcome.GRACE_EXCEEDED) is None  # 90 + 10 = 100 s left
    assert limits.penalized(ip) == pytest.approx(100.0)
    clock.advance(99.9)
    assert limits.admit(ip) is Verdict.PENALIZED
    clock.advance(0.2)
    assert limits.penalized(ip) == 0.0
    assert limits.tracked(4) == 0
    assert limits.admit(ip) is Verdict.ADMITTED
    assert limits.closed(ip, Outcome.AUTHENTICATED) is None


def test_penalty_below_min_expires_without_being_enforced() -> None:
    limits, clock = make()
    ip = "203.0.113.10"
    for _ in range(2):
        fail_connection(limits, ip, Outcome.AUTHFAIL)  # 10 s outstanding, below min 15 s
    clock.advance(10.01)
    assert limits.tracked(4) == 0
    for _ in range(3):  # starts over: three more are still tolerated
        assert fail_connection(limits, ip, Outcome.AUTHFAIL) is None


def test_penalties_group_ipv6_by_prefix() -> None:
    limits, _ = make()
    assert fail_connection(limits, "2001:db8:5::1", Outcome.CRASH) is not None
    assert limits.admit("2001:db8:5::2") is Verdict.PENALIZED  # same /64
    assert limits.admit("2001:db8:5:1::2") is Verdict.ADMITTED


@pytest.mark.parametrize("outcome", list(Outcome)[1:])
def test_zero_seconds_disables_one_kind(outcome: Outcome) -> None:
    limits, _ = make(**{f"penalty_{outcome.value}": 0.0})
    for _ in range(100):
        assert fail_connection(limits, "203.0.113.11", outcome) is None
    assert limits.tracked(4) == 0


def test_penalties_off() -> None:
    limits, _ = make(penalties=False)
    for _ in range(10):
        assert fail_connection(limits, "203.0.113.12", Outcome.CRASH) is None
    assert limits.admit("203.0.113.12") is Verdict.ADMITTED
    assert limits.penalized("203.0.113.12") == 0.0


def test_exempt_sources_are_never_penalised() -> None:
    limits, _ = make(penalty_exempt=["192.0.2.0/24"], per_source_max_startups=4)
    for _ in range(10):
        assert fail_connection(limits, "192.0.2.5", Outcome.CRASH) is None
    assert limits.admit("192.0.2.5") is Verdict.ADMITTED
    assert limits.penalized("192.0.2.5") == 0.0
    for _ in range(3):
        assert limits.admit("192.0.2.5") is Verdict.ADMITTED
    assert limits.admit("192.0.2.5") is Verdict.SOURCE_LIMIT  # startup limits still apply


# -- the penalty table's bound -------------------------------------------------------------


def test_overflow_permissive_forgets_the_soonest_to_expire() -> None:
    limits, clock = make(penalty_max_sources4=3)
    for i, seconds_of_crash in enumerate((1, 3, 2)):
        ip = f"203.0.113.{i + 1}"
        fail_connection(limits, ip, Outcome.CRASH)
        clock.advance(0.001 * seconds_of_crash)
    # all three active; expiries differ by the tiny advances, .1 expires first
    assert limits.tracked(4) == 3
    fail_connection(limits, "203.0.113.4", Outcome.CRASH)
    assert limits.tracked(4) == 3
    assert limits.admit("203.0.113.1") is Verdict.ADMITTED  # forgotten early
    for ip in ("203.0.113.2", "203.0.113.3", "203.0.113.4"):
        assert limits.admit(ip) is Verdict.PENALIZED
    assert limits.admit("198.51.100.1") is Verdict.ADMITTED


def test_overflow_deny_all_refuses_everyone_until_an_entry_expires() -> None:
    limits, clock = make(penalty_max_sources4=2, penalty_overflow="deny-all")
    fail_connection(limits, "203.0.113.1", Outcome.CRASH)  # 90 s
    fail_connection(limits, "203.0.113.2", Outcome.NOAUTH)  # 1 s, counts against the table
    assert limits.admit("198.51.100.1") is Verdict.PENALTY_TABLE_FULL
    assert limits.admit("2001:db8::1") is Verdict.ADMITTED  # IPv6 has its own table
    clock.advance(1.01)
    assert limits.admit("198.51.100.1") is Verdict.ADMITTED
    assert limits.admit("203.0.113.1") is Verdict.PENALIZED


def test_overflow_deny_all_still_extends_tracked_sources_and_spares_exempt() -> None:
    limits, _ = make(
        penalty_max_sources4=1, penalty_overflow="deny-all", penalty_exempt=["127.0.0.1/32"]
    )
    assert limits.admit("203.0.113.1") is Verdict.ADMITTED
    assert limits.admit("203.0.113.1") is Verdict.ADMITTED
    assert limits.closed("203.0.113.1", Outcome.AUTHFAIL) is None  # 5 s; the table is full
    assert limits.admit("127.0.0.1") is Verdict.ADMITTED  # exempt
    assert limits.closed("203.0.113.1", Outcome.CRASH) is not None  # extended: 95 s
    assert limits.penalized("203.0.113.1") == pytest.approx(95.0)


def test_overflow6_separate_mode() -> None:
    limits, _ = make(
        penalty_max_sources6=1, penalty_overflow="permissive", penalty_overflow6="deny-all"
    )
    fail_connection(limits, "2001:db8::1", Outcome.NOAUTH)
    assert limits.admit("2001:db8:1::1") is Verdict.PENALTY_TABLE_FULL
    assert limits.admit("198.51.100.1") is Verdict.ADMITTED


def test_heap_stays_bounded_under_a_stream_of_penalties() -> None:
    limits, clock = make(penalty_max=60.0)
    for _ in range(20000):
        assert limits.admit("203.0.113.1") in (Verdict.ADMITTED, Verdict.PENALIZED)
        if limits.unauthenticated:
            limits.closed("203.0.113.1", Outcome.NOAUTH)
        clock.advance(0.001)
    table = limits._tables[4]  # the internal bound, on purpose
    assert len(table._heap) <= 2 * len(table.entries) + 65


# -- misuse and hostile input --------------------------------------------------------------


@pytest.mark.parametrize("ip", ["", "not-an-ip", "10.0.0.256", "2001:db8::g", "10.0.0.1/24"])
def test_garbage_addresses_raise(ip: str) -> None:
    limits, _ = make()
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        limits.admit(ip)


def test_calls_without_a_matching_admit_raise() -> None:
    limits, _ = make()
    with pytest.raises(ValueError, match="no unauthenticated connection"):
        limits.authenticated("10.0.0.1")
    with pytest.raises(ValueError, match="no unauthenticated connection"):
        limits.closed("10.0.0.1", Outcome.NOAUTH)
    with pytest.raises(ValueError, match="never authenticated"):
        limits.closed("10.0.0.1", Outcome.AUTHENTICATED)
    assert limits.admit("10.0.0.1") is Verdict.ADMITTED
    limits.authenticated("10.0.0.1")
    with pytest.raises(ValueError, match="no unauthenticated connection"):
        limits.closed("10.0.0.1", Outcome.AUTHFAIL)  # it authenticated: not a pre-auth end
    limits.closed("10.0.0.1", Outcome.AUTHENTICATED)


def test_verdict_reasons_are_distinct_event_reasons() -> None:
    reasons = [verdict.reason for verdict in Verdict]
    assert len(set(reasons)) == len(reasons)
    assert Verdict.PENALIZED.reason == "penalized"
    assert all(reason.isidentifier() for reason in reasons)


# -- the flood of the acceptance test, simulated -------------------------------------------


def test_flood_of_50_sources_is_refused_and_penalised_while_another_logs_in() -> None:
    """50 sources x 40 idle connections (127.0.0.10-59), closed by the login timeout, retried;
    meanwhile 127.0.0.2 logs in 20 times. Settings a test would choose for the gateway."""
    limits, clock = make(per_source_max_startups=8, max_startups="600:30:1000")
    flooders = [f"127.0.0.{i}" for i in range(10, 60)]
    open_: dict[str, int] = dict.fromkeys(flooders, 0)
    refused: dict[Verdict, int] = {}
    penalised: set[str] = set()
    logins = 0
    for second in range(30):
        for ip in flooders:  # every source tops up to 40 connections each second
            while open_[ip] < 40:
                verdict = limits.admit(ip)
                if verdict is not Verdict.ADMITTED:
                    refused[verdict] = refused.get(verdict, 0) + 1
                    break
                open_[ip] += 1
        if second % 5 == 4:  # the login timeout (5 s here) closes the idle ones
            for ip in flooders:
                for _ in range(open_[ip]):
                    penalty = limits.closed(ip, Outcome.GRACE_EXCEEDED)
                    if penalty is not None:
                        penalised.add(penalty.source)
                open_[ip] = 0
        if logins < 20:
            login(limits, "127.0.0.2")
            logins += 1
        clock.advance(1.0)
    assert logins == 20
    assert refused[Verdict.SOURCE_LIMIT] > 0
    assert refused[Verdict.PENALIZED] > 0
    assert penalised == {f"{ip}/32" for ip in flooders}
    assert set(refused) <= {Verdict.SOURCE_LIMIT, Verdict.PENALIZED}
