"""Stockade: zero-trust access and supply-chain security for shared developer workspaces."""

__version__ = "0.1.0"
