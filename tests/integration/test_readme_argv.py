"""The README never teaches putting a secret on a command line (fast, no server).

A value on argv is readable by every local user (`ps`, /proc/PID/cmdline) for as long as the
process runs. `bao`/`vault kv put KEY=VALUE` takes `KEY=-` (stdin) and `KEY=@FILE` instead;
`stockade` commands take passwords from prompts, `--stdin` or `--password-env`.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from .readme_walkthrough import blocks

README = Path(__file__).resolve().parents[2] / "README.md"

_SECRET_KEY = re.compile(r"(password|passwd|secret|token|key)$", re.IGNORECASE)


def _logical_lines(body: str) -> list[str]:
    """Shell lines of a block, continuation lines (trailing ``\\`` or ``|``) joined."""
    joined: list[str] = []
    pending = ""
    for raw in body.splitlines():
        line = raw.split(" #", 1)[0].rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        if line.endswith("|"):
            pending += line + " "
            continue
        joined.append(pending + line)
        pending = ""
    if pending:
        joined.append(pending)
    return joined


def secrets_on_argv(markdown: str) -> list[tuple[int, str]]:
    """(fence line, command) of every `bao`/`vault` command in a shell or console block that
    gives a secret-looking field a literal value."""
    found: list[tuple[int, str]] = []
    for block in blocks(markdown):
        if block.words[:1] not in (["sh"], ["console"]):
            continue
        for line in _logical_lines(block.body):
            for command in re.split(r"\|\s*|&&|;", line):
                try:
                    words = shlex.split(command)
                except ValueError:
                    continue
                names = [Path(w).name for w in words[:1]]
                if names not in (["bao"], ["vault"]):
                    continue
                for word in words[1:]:
                    key, sep, value = word.partition("=")
                    if sep and _SECRET_KEY.search(key) and value != "-" and value[:1] != "@":
                        found.append((block.line, command.strip()))
    return found


def test_readme_passes_no_secret_on_a_command_line() -> None:
    assert secrets_on_argv(README.read_text()) == []


def test_the_check_sees_a_password_on_argv() -> None:
    page = "```sh\nbao kv put secret/x username=alice password=hunter2\n```\n"
    assert secrets_on_argv(page) == [(1, "bao kv put secret/x username=alice password=hunter2")]
    piped = "```console\nprintf %s x |\n  .venv/bin/vault kv put secret/x token=abc\n```\n"
    assert len(secrets_on_argv(piped)) == 1
    safe = "```sh\nprintf %s x | bao kv put secret/x password=- token=@t.txt\n```\n"
    assert secrets_on_argv(safe) == []
