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


def _options_unknown(words: list[str]) -> list[str]:
    """The ``--options`` of ``stockade WORDS`` that its command does not take."""
    import typer

    from stockade.cli import app

    command = typer.main.get_command(app)
    index = 0
    while hasattr(command, "list_commands") and index < len(words):
        nxt = command.get_command(command.context_class(command), words[index])
        if nxt is None:
            break
        command, index = nxt, index + 1
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    known.add("--help")
    given = [w.split("=", 1)[0] for w in words[index:] if w.startswith("-") and w != "-"]
    return [w for w in given if w not in known]


def test_every_option_of_a_readme_command_exists() -> None:
    """`console` blocks are not run: a misspelled option there would go unnoticed."""
    from .readme_walkthrough import commands

    checked = 0
    for line, text in commands(README.read_text()):
        try:
            words = shlex.split(text)[1:]
        except ValueError:
            words = text.split()[1:]
        assert _options_unknown(words) == [], f"README line {line}: {text!r}"
        checked += 1
    assert checked > 40


def test_the_option_check_sees_a_typo() -> None:
    assert _options_unknown(["sessions", "play", "s-1", "--idle-time-limt", "1"]) == [
        "--idle-time-limt"
    ]
    assert _options_unknown(["sessions", "play", "s-1", "-i", "1", "--raw"]) == []
