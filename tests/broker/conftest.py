"""Broker fixtures (defined in ``fixtures.py`` so integration tests can use them too)."""

from broker.fixtures import env, openbao

__all__ = ["env", "openbao"]
