"""plan_session fails closed: an obligation the gateway cannot meet refuses the request."""

from __future__ import annotations

import pytest

from stockade.authz import Obligations
from stockade.gateway._plan import ChannelRequest, Refusal, SessionPlan, plan_session


@pytest.mark.parametrize(
    "obligations",
    [
        Obligations(kill_session=True),
        Obligations(ban_user=True),
        Obligations(patches=(("/spec/hostNetwork", True),)),
        Obligations(privileged=True),
    ],
)
def test_obligations_the_gateway_does_not_enforce_refuse(obligations: Obligations) -> None:
    """ATTACK (policy side): a decision on ssh.exec that obliges ban_user, kill_session or a
    Pod patch must not run the command as if nothing was asked."""
    assert isinstance(plan_session(obligations, ChannelRequest(command="id")), Refusal)


def test_plain_obligations_plan() -> None:
    plan = plan_session(Obligations(record_session=True, record_input=True), ChannelRequest())
    assert plan == SessionPlan(record=True, record_input=True)
