"""Stockade: zero-trust access and supply-chain security for shared developer workspaces."""

import os as _os

# grpcio's C core installs fork handlers by default; a child forked (not vfork'ed: a
# ``preexec_fn``, a pty) while gRPC threads run then crashes before its exec (SIGSEGV, SIGABRT,
# "epoll_wait error"): about one session in ten on a busy gateway with gRPC peers. Stockade
# never uses gRPC in a forked child, so the handlers are off unless the environment says otherwise.
_os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

__version__ = "0.1.0"
