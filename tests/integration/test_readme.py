"""README.md runs as written: its `sh` blocks, top to bottom, against a real `make up`.

The walkthrough runs in a network namespace this test creates (the README's literal ports are
free there and only its loopback is reachable), with a fresh HOME and data dir, the system PATH
only (the README itself puts `.venv/bin` on it), the real `make up`, the real `stockade` CLI,
OpenSSH and an OpenBao dev server started by the README's own blocks. The runner is
`readme_walkthrough`; the fast cases here check it on small pages, the README's other blocks
(every `stockade` command named exists, TOML examples load, links resolve) and that a typo in
a README command fails the walk.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from gateway.harness import remove_workspace_netns
from typer.testing import CliRunner

from stockade.cli import _common, app

from .readme_walkthrough import Walkthrough, WalkthroughFailed, blocks, commands

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 and not IN_CI, reason="needs root (ip netns, nftables, sandboxes)"
)


# --- the runner, on small pages (fast, no namespace) ---

PAGE = """\
# Try

```sh
echo one > "$TMPDIR/f"
export GREETING=hello
cd "$TMPDIR"
```

```console
ehco never run
```

```sh terminal=1 ready=serving
trap 'echo stopped > "$TMPDIR/stopped"; exit 0' INT
echo serving
for _ in $(seq 600); do sleep 0.1; done
```

```sh
test "$(cat f)" = one
test "$GREETING" = hello
echo "in $(basename "$PWD")"
```

```sh terminal=1 ready=again
echo again
for _ in $(seq 600); do sleep 0.1; done
```

```sh
test "$(cat stopped)" = stopped
```
"""


def test_runner_keeps_state_runs_terminals_and_skips_other_fences(tmp_path: Path) -> None:
    walk = Walkthrough(cwd=tmp_path, scratch=tmp_path / "scratch")
    walk.run(PAGE)
    assert [b.line for b in walk.ran] == [3, 13, 19, 25, 30]
    assert "in scratch" in walk.outputs[19]
    assert [name for name, _ in walk.logs] == ["1", "1"]  # stopped (Ctrl-C), then at the end


@pytest.mark.parametrize(
    ("right", "wrong", "line"),
    [
        ('echo one > "$TMPDIR/f"', 'ehco one > "$TMPDIR/f"', 3),
        ("echo serving", "echo servign", 13),  # never ready
        ('test "$(cat f)" = one', 'test "$(cat f)" = oen', 19),
    ],
)
def test_runner_fails_at_the_block_with_a_typo(
    tmp_path: Path, right: str, wrong: str, line: int
) -> None:
    assert right in PAGE
    walk = Walkthrough(cwd=tmp_path, scratch=tmp_path / "scratch", ready_timeout=3)
    with pytest.raises(WalkthroughFailed) as failed:
        walk.run(PAGE.replace(right, wrong, 1))
    assert failed.value.block.line == line
    assert not walk._terminals  # everything started was stopped


def test_fences_are_parsed_strictly() -> None:
    assert [b.runnable for b in blocks("```sh\na\n```\n```shell\nb\n```\n")] == [True, False]
    with pytest.raises(ValueError, match="line 1"):
        blocks("```sh\nnever closed\n")
    with pytest.raises(ValueError, match="bad info string"):
        blocks("```sh terminal=1\nno ready text\n```\n")


# --- the README's other blocks (fast) ---


def _command_names(group: Any, words: list[str]) -> list[str]:
    """The longest prefix of ``words`` that names a command of the CLI."""
    path: list[str] = []
    command = group
    for word in words:
        if not hasattr(command, "list_commands"):
            break
        ctx = command.context_class(command)  # typer's own (vendored) click
        nxt = command.get_command(ctx, word)
        if nxt is None:
            break
        path.append(word)
        command = nxt
    if hasattr(command, "list_commands"):
        raise AssertionError(f"'stockade {' '.join(words)}' names a group, no command")
    return path


def test_every_stockade_command_in_the_readme_exists() -> None:
    root = typer.main.get_command(app)
    seen = 0
    for line, text in commands(README.read_text()):
        words = text.split()[1:]
        path = _command_names(root, words)
        assert path, f"README line {line}: {text!r} names no stockade command"
        seen += 1
    assert seen > 40


def test_readme_toml_examples_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stockade.core import load_settings

    for key in list(os.environ):
        if key.startswith(("STOCKADE_", "VAULT_")):
            monkeypatch.delenv(key)
    examples = [b for b in blocks(README.read_text()) if b.words[:1] == ["toml"]]
    assert examples
    for block in examples:
        path = tmp_path / f"line{block.line}.toml"
        path.write_text(block.body)
        monkeypatch.setenv("STOCKADE_CONFIG", str(path))
        load_settings()  # raises ConfigError naming the key when the example is wrong
        result = CliRunner().invoke(app, ["config", "show", "--changed", "--json"])
        _common.settings.cache_clear()
        assert result.exit_code == 0, (block.line, result.output)


def test_readme_links_stay_inside_the_repository() -> None:
    text = README.read_text()
    links = re.findall(r"\]\(([^)#\s]+)\)", text)
    assert links
    for target in links:
        if re.match(r"[a-z]+://", target):
            continue
        path = (REPO / target).resolve()
        assert path.is_relative_to(REPO), target
        assert path.exists(), target


# --- the walkthrough itself ---


@pytest.fixture
def netns(tmp_path: Path) -> Iterator[str]:
    name = f"readme-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
        remove_workspace_netns(tmp_path / "data")  # the walkthrough's workspaces' own


def _walk(tmp_path: Path, netns: str) -> Walkthrough:
    return Walkthrough(
        cwd=REPO,
        scratch=tmp_path,
        extra_env={"STOCKADE_DATA_DIR": str(tmp_path / "data")},
        netns=netns,
    )


def _output_of(walk: Walkthrough, needle: str) -> str:
    page = README.read_text()
    for block in blocks(page):
        if block.runnable and needle in block.body:
            return walk.outputs[block.line]
    raise AssertionError(f"no README block runs {needle!r}")


@needs_root
@pytest.mark.slow
@pytest.mark.root
@pytest.mark.timeout(600)
def test_readme_walkthrough_runs_as_written(tmp_path: Path, netns: str) -> None:
    walk = _walk(tmp_path, netns)
    walk.run(README.read_text())
    assert len(walk.ran) >= 10
    assert "hello from alice" in _output_of(walk, 'echo "hello from')
    played = _output_of(walk, "stockade sessions play")
    assert "this session is recorded" in played
    assert '"version": 2' in played  # the export to stdout
    assert "otpauth://totp/" in _output_of(walk, "totp enroll")
    assert "password=example-not-a-token" in _output_of(walk, "git credential fill")
    assert "203.0.113.7" in _output_of(walk, "shield ban")
    assert "/console/login#code=" in _output_of(walk, "console login")
    ups = [text for name, text in walk.logs if name == "1"]
    assert len(ups) == 2
    assert all("ready; Ctrl-C to stop" in text for text in ups)
    assert "no secrets backend configured" in ups[0]
    assert "no secrets backend configured" not in ups[1]


@needs_root
@pytest.mark.slow
@pytest.mark.root
@pytest.mark.timeout(600)
def test_a_typo_in_a_readme_command_fails_the_walkthrough(tmp_path: Path, netns: str) -> None:
    page = README.read_text()
    right = "stockade users add alice"
    assert right in page
    broken = page.replace(right, "stockade users ad alice", 1)
    walk = _walk(tmp_path, netns)
    with pytest.raises(WalkthroughFailed) as failed:
        walk.run(broken)
    assert "stockade users ad alice" in failed.value.block.body
    assert "No such command" in failed.value.output
    assert not walk._terminals  # `make up` was stopped
