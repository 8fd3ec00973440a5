"""Run a Markdown page's shell blocks top to bottom, as a newcomer types them.

Fences (CommonMark backtick fences at the start of a line):

- ```` ```sh ````: run in the main terminal with ``bash -euo pipefail``; it must exit 0. The
  main terminal keeps its state from block to block (exported variables, the working
  directory), as one terminal window does.
- ```` ```sh terminal=N ready=TEXT ````: a command that runs in the foreground of terminal N
  (``make up``, a dev server). It is started in the background and the walk goes on once its
  output shows TEXT. A later block for the same terminal first stops the one running there
  with SIGINT to its process group (the Ctrl-C the page asks for) and waits for it to exit.
  Each such block starts from a fresh terminal's environment.
- any other fence (``console``, ``toml``, ``text``): shown, never run.

Every process runs with a clean environment (no ``STOCKADE_*``, ``VAULT_*`` or agent socket
of the caller, the system ``PATH`` only), a fresh ``HOME`` and, with ``netns``, inside that
network namespace (so the page's literal ports, 2222 and friends, are free and only loopback
there is reachable). OpenSSH reads ``~/.ssh`` from the password database, not ``$HOME``; an
``ssh`` earlier on ``PATH`` points it at the fresh home's config (known hosts and identity
there), as on a fresh machine. Everything started is stopped at the end, by process group.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Block", "Walkthrough", "WalkthroughFailed", "blocks"]

_FENCE = re.compile(r"^(?P<fence>`{3,})(?P<info>[^`]*)$")

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Block:
    """One fenced block: where it starts (1-based line of the fence), its info string, body."""

    line: int
    info: str
    body: str

    @property
    def words(self) -> list[str]:
        return shlex.split(self.info) if self.info.strip() else []

    @property
    def runnable(self) -> bool:
        return bool(self.words) and self.words[0] == "sh"

    @property
    def options(self) -> dict[str, str]:
        pairs = (word.partition("=") for word in self.words[1:])
        return {key: value for key, _, value in pairs}

    @property
    def terminal(self) -> str | None:
        return self.options.get("terminal")


class WalkthroughFailed(AssertionError):
    """A block failed: names its line in the page and carries the output."""

    def __init__(self, block: Block, problem: str, output: str) -> None:
        super().__init__(
            f"line {block.line}: {problem}\n--- block ---\n{block.body}--- output ---\n{output}"
        )
        self.block = block
        self.problem = problem
        self.output = output


def blocks(markdown: str) -> list[Block]:
    """Every fenced block of ``markdown``, in order."""
    found: list[Block] = []
    lines = markdown.splitlines(keepends=True)
    index = 0
    while index < len(lines):
        match = _FENCE.match(lines[index].rstrip("\n"))
        if match is None:
            index += 1
            continue
        fence, start = match.group("fence"), index
        body: list[str] = []
        index += 1
        while index < len(lines) and not lines[index].rstrip().startswith(fence):
            body.append(lines[index])
            index += 1
        if index >= len(lines):
            raise ValueError(f"line {start + 1}: fence never closed")
        found.append(Block(line=start + 1, info=match.group("info").strip(), body="".join(body)))
        index += 1
    for block in found:
        if block.runnable:
            unknown = set(block.options) - {"terminal", "ready"}
            if unknown or ("terminal" in block.options) != ("ready" in block.options):
                raise ValueError(f"line {block.line}: bad info string {block.info!r}")
    return found


@dataclass
class _Terminal:
    block: Block
    proc: subprocess.Popen[bytes]
    output: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def text(self) -> str:
        return "".join(self.output)


@dataclass
class Walkthrough:
    """Runs the blocks of one page in ``cwd``; ``scratch`` holds the fresh home and state."""

    cwd: Path
    scratch: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    netns: str | None = None
    block_timeout: float = 180.0
    ready_timeout: float = 180.0
    ran: list[Block] = field(default_factory=list)
    outputs: dict[int, str] = field(default_factory=dict)
    """Output of each main-terminal block that ran, by the line of its fence."""
    logs: list[tuple[str, str]] = field(default_factory=list)
    """(terminal, output) of each background command, once stopped."""
    durations: dict[int, float] = field(default_factory=dict)
    """Seconds each block took (a background one: until ready), by the line of its fence."""
    _terminals: dict[str, _Terminal] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.home = self.scratch / "home"
        self.bin = self.scratch / "bin"
        self.state = self.scratch / "main-terminal.state"
        ssh_dir = self.home / ".ssh"
        ssh_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
        self.bin.mkdir(parents=True, exist_ok=True)
        config = ssh_dir / "config"
        config.write_text(
            "Host *\n"
            f"  UserKnownHostsFile {ssh_dir / 'known_hosts'}\n"
            f"  IdentityFile {ssh_dir / 'id_ed25519'}\n"
        )
        wrapper = self.bin / "ssh"
        wrapper.write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {shlex.quote(str(config))} "$@"\n')
        wrapper.chmod(0o755)
        self.state.write_text("")

    def env(self) -> dict[str, str]:
        env = {
            "PATH": f"{self.bin}:{SYSTEM_PATH}",
            "HOME": str(self.home),
            "USER": os.environ.get("USER", "root"),
            "LOGNAME": os.environ.get("USER", "root"),
            "LANG": "C.UTF-8",
            "TERM": "dumb",
            "TMPDIR": str(self.scratch),
        }
        env.update(self.extra_env)
        return env

    def _argv(self, script: str) -> list[str]:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return [*prefix, "bash", "--noprofile", "--norc", "-c", script]

    def run(self, page: str) -> None:
        """Run every runnable block of ``page``; raise :class:`WalkthroughFailed` at the first
        that fails. Stops what it started, whatever happens."""
        try:
            for block in blocks(page):
                if not block.runnable:
                    continue
                started = time.monotonic()
                if block.terminal is None:
                    self._foreground(block)
                else:
                    self._background(block)
                self.durations[block.line] = time.monotonic() - started
                self.ran.append(block)
        finally:
            self.stop_all()

    def _foreground(self, block: Block) -> None:
        state = shlex.quote(str(self.state))
        script = (
            f"source {state}\nset -euo pipefail\n{block.body}\n"
            f"{{ export -p; printf 'cd %q\\n' \"$PWD\"; }} > {state}\n"
        )
        try:
            done = subprocess.run(
                self._argv(script),
                cwd=self.cwd,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=self.block_timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            output = (exc.output or b"").decode(errors="replace")
            problem = f"still running after {self.block_timeout}s"
            raise WalkthroughFailed(block, problem, output) from None
        output = done.stdout.decode(errors="replace")
        if done.returncode != 0:
            raise WalkthroughFailed(block, f"exit status {done.returncode}", output)
        self.outputs[block.line] = output

    def _background(self, block: Block) -> None:
        name, ready = block.options["terminal"], block.options["ready"]
        if name in self._terminals:
            self._stop(self._terminals.pop(name))
        proc = subprocess.Popen(
            self._argv(f"set -euo pipefail\n{block.body}"),
            cwd=self.cwd,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: SIGINT reaches all of it, as Ctrl-C
        )
        terminal = _Terminal(block=block, proc=proc)
        seen = threading.Event()

        def read() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.decode(errors="replace")
                terminal.output.append(line)
                if ready in line:
                    seen.set()
            seen.set()  # end of output: the wait below looks at the process

        terminal.reader = threading.Thread(target=read, daemon=True)
        terminal.reader.start()
        self._terminals[name] = terminal
        deadline = time.monotonic() + self.ready_timeout
        while not seen.wait(0.2):
            if time.monotonic() > deadline:
                problem = f"no {ready!r} within {self.ready_timeout}s"
                raise WalkthroughFailed(block, problem, terminal.text())
        if ready not in terminal.text():
            proc.wait(timeout=10)
            raise WalkthroughFailed(
                block, f"exited ({proc.returncode}) before printing {ready!r}", terminal.text()
            )

    def _stop(self, terminal: _Terminal) -> None:
        proc = terminal.proc
        for sig, grace in ((signal.SIGINT, 40.0), (signal.SIGKILL, 10.0)):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
        if terminal.reader is not None:
            terminal.reader.join(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
        self.logs.append((terminal.block.options["terminal"], terminal.text()))

    def stop_all(self) -> None:
        while self._terminals:
            _, terminal = self._terminals.popitem()
            self._stop(terminal)


def runnable_lines(page: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of every non-blank line inside the runnable blocks."""
    for block in blocks(page):
        if block.runnable:
            for offset, text in enumerate(block.body.splitlines(), start=1):
                if text.strip():
                    yield block.line + offset, text


def commands(page: str, fences: Sequence[str] = ("sh", "console")) -> Iterator[tuple[int, str]]:
    """(line, words after ``stockade``) of each line that starts a ``stockade`` command in the
    blocks whose first info word is in ``fences`` (for checking that every command exists)."""
    for block in blocks(page):
        if not block.words or block.words[0] not in fences:
            continue
        for offset, text in enumerate(block.body.splitlines(), start=1):
            stripped = text.split("#", 1)[0].strip()
            for part in re.split(r"\|\s*|&&\s*|\$\(", stripped):
                part = part.strip()
                if part.startswith("stockade "):
                    yield block.line + offset, part
