"""Regression: children forked from a process with live gRPC traffic must not crash.

grpcio's fork handlers (on by default) made about one in ten children forked with a
``preexec_fn`` die with SIGSEGV/SIGABRT before their exec, so gateway sessions failed at random
under load (seen in ``bench_scale``: "ev_epoll1_linux.cc ... Check failed" on the client's
stderr). Importing ``stockade`` turns the handlers off; this runs the pattern in a fresh
interpreter (gRPC reads the setting when it starts).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import asyncio
    import stockade  # noqa: F401  (sets the gRPC fork default before gRPC starts)
    from grpc import aio
    from grpc_health.v1 import _async as health_aio, health_pb2, health_pb2_grpc

    async def main():
        server = aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = aio.insecure_channel(f"127.0.0.1:{port}")
        stub = health_pb2_grpc.HealthStub(channel)
        done = asyncio.Event()

        async def traffic():
            while not done.is_set():
                await stub.Check(health_pb2.HealthCheckRequest())

        tasks = [asyncio.create_task(traffic()) for _ in range(8)]
        crashed = 0
        for _ in range(120):
            child = await asyncio.create_subprocess_exec(
                "true", preexec_fn=lambda: None, stderr=asyncio.subprocess.PIPE
            )
            _, err = await child.communicate()
            crashed += child.returncode != 0 or bool(err)
        done.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await channel.close()
        await server.stop(0)
        print("crashed", crashed)

    asyncio.run(main())
    """
)


def test_forked_children_survive_live_grpc_traffic() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "crashed 0", result.stdout + result.stderr[-2000:]
