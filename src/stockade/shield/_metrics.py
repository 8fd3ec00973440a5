"""Shield metrics, rendered in the Prometheus text exposition format (version 0.0.4)."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["LATENCY_BUCKETS", "ShieldMetrics"]

#: Upper bounds (seconds) of the failure-to-ban latency histogram.
_LATENCY = "stockade_shield_ban_latency_seconds"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class ShieldMetrics:
    """Counters the shield updates; :meth:`render` is what the admin endpoint serves."""

    events_consumed: int = 0
    """Failure events handled (every delivery that was acknowledged, malformed ones included)."""
    events_malformed: int = 0
    """Events that were not a valid ``AuthFailed`` (sent to the dead-letter subject)."""
    bans_issued: int = 0
    """Bans the detector decided and stored."""
    allowlisted: int = 0
    """Failures from allowlisted sources (counted, never banned)."""
    active_bans: Callable[[], int] = field(default=lambda: 0)
    """Reads the number of bans in force when rendering."""
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0

    def observe_latency(self, seconds: float) -> None:
        """Record one failure-to-ban latency (event stored on the bus -> ban stored)."""
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += max(seconds, 0.0)

    def render(self) -> str:
        lines = [
            "# HELP stockade_shield_events_consumed_total Failure events handled by the shield.",
            "# TYPE stockade_shield_events_consumed_total counter",
            f"stockade_shield_events_consumed_total {self.events_consumed}",
            "# HELP stockade_shield_events_malformed_total Malformed failure events.",
            "# TYPE stockade_shield_events_malformed_total counter",
            f"stockade_shield_events_malformed_total {self.events_malformed}",
            "# HELP stockade_shield_bans_issued_total Bans decided and stored by the shield.",
            "# TYPE stockade_shield_bans_issued_total counter",
            f"stockade_shield_bans_issued_total {self.bans_issued}",
            "# HELP stockade_shield_allowlisted_total Failures from allowlisted sources.",
            "# TYPE stockade_shield_allowlisted_total counter",
            f"stockade_shield_allowlisted_total {self.allowlisted}",
            "# HELP stockade_shield_active_bans Bans currently in force.",
            "# TYPE stockade_shield_active_bans gauge",
            f"stockade_shield_active_bans {self.active_bans()}",
            "# HELP stockade_shield_ban_latency_seconds From the threshold-crossing failure "
            "reaching the bus to its ban being stored.",
            "# TYPE stockade_shield_ban_latency_seconds histogram",
        ]
        cumulative = 0
        for bound, count in zip(LATENCY_BUCKETS, self.latency_counts, strict=False):
            cumulative += count
            lines.append(
                f'stockade_shield_ban_latency_seconds_bucket{{le="{bound:g}"}} {cumulative}'
            )
        cumulative += self.latency_counts[-1]
        lines.append(f'stockade_shield_ban_latency_seconds_bucket{{le="+Inf"}} {cumulative}')
        lines.append(f"stockade_shield_ban_latency_seconds_sum {self.latency_sum:.6f}")
        lines.append(f"stockade_shield_ban_latency_seconds_count {cumulative}")
        return "\n".join(lines) + "\n"
