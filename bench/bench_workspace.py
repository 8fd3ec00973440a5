"""Workspace runtimes: entering a Podman workspace vs the Podman CLI and vs the sandbox.

Measured at the runtime interface (``open(spec)`` to the session's exit), the part of a login
this package owns; the SSH handshake in front of it is the gateway's and the same for both.

- cold: a session in a workspace whose Pod does not exist yet (render, Pod Security gate,
  ``kube play``, agent link, session) vs ``podman kube play`` of the same rendered Pod followed by
  ``podman exec ... true`` (goal <= 1.2x);
- warm: a session in a running Pod (through the agent, no ``podman exec``) vs the sandbox
  backend (bubblewrap) running ``true`` (goal <= 1.5x); ``podman exec true`` shown beside it;
- 20 concurrent cold workspaces: all succeed, p99 reported.

Needs root, podman, runc, busybox-static, gcc and bubblewrap.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from bench._report import record
from stockade.workspace import (
    DEFAULT_BLUEPRINT,
    PodmanRuntime,
    SandboxBackend,
    SessionSpec,
    build_busybox_image,
    render_workspace,
)

COLD_ROUNDS = 3
WARM_ROUNDS = 40
CONCURRENT = 20


def _spec(workspace: str, n: int) -> SessionSpec:
    return SessionSpec(
        session_id=f"{workspace}-{n}", username="bench", workspace=workspace,
        workspace_config={"owner": "bench"}, command="true",
    )  # fmt: skip


async def _session(runtime: PodmanRuntime | SandboxBackend, spec: SessionSpec) -> float:
    start = time.perf_counter()
    work = await runtime.open(spec)
    while await work.read_stdout():
        pass
    status = await work.wait()
    elapsed = time.perf_counter() - start
    await work.close()
    if status.code != 0:
        raise RuntimeError(f"session ended with {status}")
    return elapsed


def _podman_cli_cold(runtime: PodmanRuntime, tmp: Path, n: int) -> float:
    """``podman kube play`` of the rendered default Pod (its own idle command, volumes as the
    runtime prepares them) plus ``podman exec true``."""
    rendered = render_workspace(
        DEFAULT_BLUEPRINT, workspace=f"anchor{n}", owner="bench", uid=210000
    )
    pod = rendered.pod
    pod["metadata"].pop("namespace", None)
    for volume in pod["spec"]["volumes"]:
        path = tmp / f"anchor{n}-{volume['name']}"
        path.mkdir(mode=0o1777, exist_ok=True)
        volume.pop("emptyDir", None)
        volume.pop("persistentVolumeClaim", None)
        volume["hostPath"] = {"path": str(path), "type": "Directory"}
    manifest = tmp / f"anchor{n}.yaml"
    manifest.write_text(yaml.safe_dump(pod))
    argv, env = runtime.podman.argv, runtime.podman.env
    name = pod["metadata"]["name"]
    start = time.perf_counter()
    subprocess.run([*argv, "kube", "play", "--quiet", "--network", "none", str(manifest)],
                   env=env, check=True, capture_output=True)  # fmt: skip
    subprocess.run([*argv, "exec", f"{name}-workspace", "/bin/true"], env=env, check=True)
    elapsed = time.perf_counter() - start
    return elapsed


def _podman_exec_warm(runtime: PodmanRuntime, container: str) -> float:
    start = time.perf_counter()
    subprocess.run([*runtime.podman.argv, "exec", container, "/bin/true"],
                   env=runtime.podman.env, check=True)  # fmt: skip
    return time.perf_counter() - start


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _cleanup(runtime: PodmanRuntime) -> None:
    """Remove every Pod of the run and its private storage."""
    argv, env = runtime.podman.argv, runtime.podman.env
    subprocess.run([*argv, "pod", "rm", "--all", "--force", "--time", "0"],
                   env=env, capture_output=True, check=False)  # fmt: skip
    subprocess.run([*argv, "system", "reset", "--force"], env=env, capture_output=True, check=False)
    shutil.rmtree(argv[argv.index("--runroot") + 1], ignore_errors=True)


async def _run(tmp: Path, runtime: PodmanRuntime) -> None:
    try:
        cold = [await _session(runtime, _spec(f"cold{n}", 0)) for n in range(COLD_ROUNDS)]
        anchor = [_podman_cli_cold(runtime, tmp, n) for n in range(COLD_ROUNDS)]
        c, a = statistics.median(cold), statistics.median(anchor)
        record("cold session (Pod created)", value=f"{c * 1000:.0f} ms",
               anchor=f"kube play + podman exec true {a * 1000:.0f} ms", ratio=c / a,
               goal="<= 1.2x", met=c / a <= 1.2)  # fmt: skip

        await _session(runtime, _spec("warm", 0))
        warm = [await _session(runtime, _spec("warm", n + 1)) for n in range(WARM_ROUNDS)]
        sandbox = SandboxBackend(  # noqa: S604 - the sessions' login shell, not a subprocess flag
            root=tmp / "homes", data_dir=tmp, sandbox="bubblewrap", shell="/bin/sh"
        )
        await _session(sandbox, _spec("warm", 0))
        local = [await _session(sandbox, _spec("warm", n + 1)) for n in range(WARM_ROUNDS)]
        container = f"{runtime._pods['warm'].name}-workspace"
        execs = [_podman_exec_warm(runtime, container) for _ in range(10)]
        w, s, e = statistics.median(warm), statistics.median(local), statistics.median(execs)
        record("warm session (Pod running, via the agent)", value=f"{w * 1000:.2f} ms",
               anchor=f"sandbox backend (bwrap) {s * 1000:.2f} ms", ratio=w / s,
               goal="<= 1.5x", met=w / s <= 1.5)  # fmt: skip
        record("warm session vs podman exec true", value=f"{w * 1000:.2f} ms",
               anchor=f"podman exec true {e * 1000:.0f} ms", ratio=w / e)  # fmt: skip

        results = await asyncio.gather(
            *(_session(runtime, _spec(f"many{n}", 0)) for n in range(CONCURRENT)),
            return_exceptions=True,
        )
        times = [r for r in results if isinstance(r, float)]
        failed = len(results) - len(times)
        record(f"{CONCURRENT} concurrent cold sessions", value=(
            f"{len(times)}/{CONCURRENT} ok, p50 {_p(times, 0.5):.2f} s, p99 {_p(times, 0.99):.2f} s"
            if times else "all failed"),
            anchor=f"one cold session {c:.2f} s", ratio=(_p(times, 0.99) / c) if times else None,
            goal="all succeed", met=failed == 0)  # fmt: skip
    finally:
        await runtime.close()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="stockade-bench-ws-") as name:
        tmp = Path(name)
        runtime = PodmanRuntime(data_dir=tmp / "data", idle_timeout=0.0)
        build_busybox_image(runtime.podman, tmp / "rootfs", DEFAULT_BLUEPRINT.effective_image)
        try:
            asyncio.run(_run(tmp, runtime))
        finally:
            _cleanup(runtime)
