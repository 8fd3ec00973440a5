"""The legacy scp protocol observer, against the real OpenSSH ``scp -O`` on both ends.

The client ``scp -O -S RELAY`` runs its remote command through a relay (a stand-in for the
gateway's channel): the relay parses the command with :func:`scp_command`, executes its argv
without a shell (``scp -t``/``scp -f``, the real server side), and logs every chunk of both
directions in causal order before forwarding it. The log is then fed to :class:`ScpObserver` in
random chunkings and interleavings and its records are compared with the files' SHA-256.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import struct
import subprocess
import sys
from collections import deque
from pathlib import Path

import pytest

from stockade.core.errors import InvalidInput
from stockade.gateway._scp import ScpFile, ScpObserver, ScpProtocolError, ScpRequest, scp_command

SCP = shutil.which("scp")

RELAY = r"""
import os, struct, subprocess, sys, threading
from stockade.gateway._scp import scp_command

log = open(os.environ["SCP_RELAY_LOG"], "ab", buffering=0)
lock = threading.Lock()
command = sys.argv[-1]
with lock:
    log.write(b"x" + struct.pack(">I", len(command.encode())) + command.encode())
request = scp_command(command)
proc = subprocess.Popen(
    request.argv(home=os.environ["SCP_RELAY_HOME"]),
    stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=os.environ["SCP_RELAY_HOME"],
)

def pump(read_fd, write_fd, tag):
    while True:
        data = os.read(read_fd, 65536)
        if not data:
            break
        with lock:  # logged before it is forwarded: the log keeps the causal order
            log.write(tag + struct.pack(">I", len(data)) + data)
        view = memoryview(data)
        while view:
            view = view[os.write(write_fd, view):]
    os.close(write_fd)

up = threading.Thread(target=pump, args=(0, proc.stdin.fileno(), b"c"), daemon=True)
up.start()
pump(proc.stdout.fileno(), 1, b"s")
sys.exit(proc.wait())
"""


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Transfer:
    """One run of the real client through the relay, and what it logged."""

    def __init__(self, tmp_path: Path) -> None:
        self.remote = tmp_path / "remote"  # the server side's home
        self.local = tmp_path / "local"
        self.remote.mkdir()
        self.local.mkdir()
        self.log = tmp_path / "relay.log"
        relay = tmp_path / "relay.py"
        relay.write_text(RELAY)
        self.wrapper = tmp_path / "fake-ssh"
        self.wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{relay}" "$@"\n')
        self.wrapper.chmod(0o755)

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[bytes]:
        assert SCP is not None
        self.log.write_bytes(b"")
        env = {
            **os.environ,
            "SCP_RELAY_LOG": str(self.log),
            "SCP_RELAY_HOME": str(self.remote),
        }
        result = subprocess.run(
            [SCP, "-O", "-q", "-S", str(self.wrapper), *args],
            cwd=self.local,
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )
        if ok:
            assert result.returncode == 0, result.stderr.decode()
        return result

    def sessions(self) -> list[tuple[str, list[tuple[str, bytes]]]]:
        """Each relay run of the last transfer: its command and its chunks in causal order."""
        raw = self.log.read_bytes()
        out: list[tuple[str, list[tuple[str, bytes]]]] = []
        offset = 0
        while offset < len(raw):
            tag = raw[offset : offset + 1].decode()
            (size,) = struct.unpack(">I", raw[offset + 1 : offset + 5])
            data = raw[offset + 5 : offset + 5 + size]
            offset += 5 + size
            if tag == "x":
                out.append((data.decode(), []))
            else:
                out[-1][1].append((tag, data))
        return out

    def chunks(self) -> tuple[str, list[tuple[str, bytes]]]:
        (session,) = self.sessions()
        return session


def rechunk(data: bytes, rng: random.Random, top: int) -> list[bytes]:
    pieces = []
    offset = 0
    while offset < len(data):
        size = rng.randint(1, top)
        pieces.append(data[offset : offset + size])
        offset += size
    return pieces


def observe_causal(
    request: ScpRequest, chunks: list[tuple[str, bytes]], rng: random.Random, top: int
) -> list[ScpFile]:
    """Feeds in the logged order, each chunk split at random; nothing waits longer than a line."""
    observer = ScpObserver(request)
    files: list[ScpFile] = []
    for tag, data in chunks:
        for piece in rechunk(data, rng, top):
            feed = observer.from_client if tag == "c" else observer.from_server
            files += feed(piece)
            assert observer.pending_bytes <= 4096  # file data is hashed as it passes, never held
    files += observer.close()
    assert files == list(observer.files)
    return files


def observe_shuffled(
    request: ScpRequest, chunks: list[tuple[str, bytes]], rng: random.Random, top: int
) -> list[ScpFile]:
    """Each direction split at random and the two interleaved at random."""
    streams = {
        tag: deque(rechunk(b"".join(data for t, data in chunks if t == tag), rng, top))
        for tag in ("c", "s")
    }
    observer = ScpObserver(request, max_pending=64 << 20)
    files: list[ScpFile] = []
    while streams["c"] or streams["s"]:
        tag = rng.choice([t for t in ("c", "s") if streams[t]])
        piece = streams[tag].popleft()
        files += (observer.from_client if tag == "c" else observer.from_server)(piece)
    return files + observer.close()


def expected(direction: str, root: Path, relative: list[str]) -> list[tuple[str, str, int, str]]:
    return [
        (direction, rel, (root / rel).stat().st_size, sha((root / rel).read_bytes()))
        for rel in relative
    ]


def summary(files: list[ScpFile]) -> list[tuple[str, str, int, str]]:
    assert all(f.completed and f.transferred == f.size and f.error is None for f in files)
    return [(f.direction, f.path, f.size, f.sha256) for f in files]


SMALL = (1, 7, 512, 70000)
LARGE = (4096, 32768, 70000, 1 << 20, 5 << 20)  # 5 MiB one byte at a time would take minutes


def check_all_chunkings(
    transfer: Transfer, want: list[tuple[str, str, int, str]], tops: tuple[int, ...] = SMALL
) -> ScpRequest:
    command, chunks = transfer.chunks()
    request = scp_command(command)
    assert request is not None, command
    for seed, top in enumerate(tops):
        rng = random.Random(seed)
        assert summary(observe_causal(request, chunks, rng, top)) == want, (seed, top)
        assert sorted(summary(observe_shuffled(request, chunks, rng, top))) == sorted(want)
    return request


@pytest.fixture
def transfer(tmp_path: Path) -> Transfer:
    assert SCP is not None, "OpenSSH's scp is required (apt-get install openssh-client)"
    return Transfer(tmp_path)


# -- uploads (scp -t on the server) --------------------------------------------------------


def test_upload_single_file(transfer: Transfer) -> None:
    data = os.urandom(12345)
    (transfer.local / "one.bin").write_bytes(data)
    transfer.run("one.bin", "localhost:.")
    assert (transfer.remote / "one.bin").read_bytes() == data
    request = check_all_chunkings(transfer, [("upload", "one.bin", 12345, sha(data))])
    assert request.direction == "upload"
    assert request.paths == (".",)


def test_upload_zero_byte_file(transfer: Transfer) -> None:
    (transfer.local / "empty").write_bytes(b"")
    transfer.run("empty", "localhost:")
    assert (transfer.remote / "empty").read_bytes() == b""
    check_all_chunkings(transfer, [("upload", "empty", 0, sha(b""))])


def test_upload_5_mib_in_random_chunkings(transfer: Transfer) -> None:
    data = random.Random(5).randbytes(5 << 20)
    (transfer.local / "big.bin").write_bytes(data)
    transfer.run("big.bin", "localhost:big-copy.bin")
    assert sha((transfer.remote / "big-copy.bin").read_bytes()) == sha(data)
    check_all_chunkings(transfer, [("upload", "big.bin", 5 << 20, sha(data))], LARGE)


def test_upload_recursive_with_times_into_a_quoted_path(transfer: Transfer) -> None:
    tree = transfer.local / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    (tree / "a.txt").write_bytes(b"alpha\n")
    (tree / "sub" / "b c.txt").write_bytes(os.urandom(70001))  # a space in a name
    (tree / "sub" / "deeper" / "empty").write_bytes(b"")
    (transfer.remote / "dest dir").mkdir()
    transfer.run("-r", "-p", "tree", "localhost:'dest dir'")
    got = transfer.remote / "dest dir" / "tree"
    relative = sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file())
    for rel in relative:
        assert (got / rel).read_bytes() == (tree / rel).read_bytes()
    command, chunks = transfer.chunks()
    request = scp_command(command)
    assert request == ScpRequest(
        direction="upload",
        paths=("dest dir",),
        recursive=True,
        preserve=True,
        target_is_directory=False,
        verbose=False,
    )
    files = observe_causal(request, chunks, random.Random(1), 333)
    want = {
        ("upload", "tree/" + rel, (tree / rel).stat().st_size, sha((tree / rel).read_bytes()))
        for rel in relative
    }
    assert set(summary(files)) == want
    assert len(files) == len(want)


def test_upload_refused_by_the_sink_is_recorded_incomplete(transfer: Transfer) -> None:
    (transfer.local / "f").write_bytes(b"data")
    result = transfer.run("f", "localhost:missing-dir/f", ok=False)
    assert result.returncode != 0
    command, chunks = transfer.chunks()
    request = scp_command(command)
    assert request is not None
    files = observe_causal(request, chunks, random.Random(0), 3)
    assert len(files) == 1
    assert files[0].path == "f"
    assert not files[0].completed
    assert files[0].transferred == 0
    assert "missing-dir/f" in (files[0].error or "")


def test_upload_to_a_target_that_must_be_a_directory(transfer: Transfer) -> None:
    (transfer.local / "f").write_bytes(b"1")
    (transfer.local / "g").write_bytes(b"2")
    transfer.run("f", "g", "localhost:nowhere", ok=False)  # -d: the sink refuses at once
    command, chunks = transfer.chunks()
    request = scp_command(command)
    assert request is not None
    assert request.target_is_directory
    observer = ScpObserver(request)
    for tag, data in chunks:
        (observer.from_client if tag == "c" else observer.from_server)(data)
    assert observer.ended
    assert observer.close() == []
    assert observer.files == ()


# -- downloads (scp -f on the server) ------------------------------------------------------


def test_download_single_and_zero_byte_files(transfer: Transfer) -> None:
    data = b"\0\1\2binary\n" * 99
    (transfer.remote / "x.bin").write_bytes(data)
    (transfer.remote / "nothing").write_bytes(b"")
    transfer.run("localhost:x.bin", "localhost:nothing", ".")
    assert (transfer.local / "x.bin").read_bytes() == data
    assert (transfer.local / "nothing").read_bytes() == b""
    # the client runs one scp -f per remote source
    (cmd1, chunks1), (cmd2, chunks2) = transfer.sessions()
    for command, chunks, name, content in (
        (cmd1, chunks1, "x.bin", data),
        (cmd2, chunks2, "nothing", b""),
    ):
        request = scp_command(command)
        assert request == ScpRequest("download", (name,), target_is_directory=True)
        for seed, top in enumerate(SMALL):
            files = observe_causal(request, chunks, random.Random(seed), top)
            assert summary(files) == [("download", name, len(content), sha(content))]


def test_download_one_file(transfer: Transfer) -> None:
    data = os.urandom(4099)
    (transfer.remote / "dl.bin").write_bytes(data)
    transfer.run("localhost:dl.bin", "copy.bin")
    assert (transfer.local / "copy.bin").read_bytes() == data
    check_all_chunkings(transfer, [("download", "dl.bin", 4099, sha(data))])


def test_download_5_mib_in_random_chunkings(transfer: Transfer) -> None:
    data = random.Random(6).randbytes(5 << 20)
    (transfer.remote / "big").write_bytes(data)
    transfer.run("localhost:big", ".")
    assert sha((transfer.local / "big").read_bytes()) == sha(data)
    check_all_chunkings(transfer, [("download", "big", 5 << 20, sha(data))], LARGE)


def test_download_recursive(transfer: Transfer) -> None:
    tree = transfer.remote / "proj"
    (tree / "src").mkdir(parents=True)
    (tree / "README").write_bytes(b"read me\n")
    (tree / "src" / "main.py").write_bytes(b"print('hi')\n" * 1000)
    (tree / "src" / "empty.py").write_bytes(b"")
    transfer.run("-r", "localhost:~/proj", ".")
    command, chunks = transfer.chunks()
    request = scp_command(command)
    assert request is not None
    assert request.paths == ("~/proj",)
    assert request.recursive
    want = {
        ("download", "proj/" + str(p.relative_to(tree)), p.stat().st_size, sha(p.read_bytes()))
        for p in tree.rglob("*")
        if p.is_file()
    }
    for seed in range(3):
        files = observe_causal(request, chunks, random.Random(seed), 97)
        assert set(summary(files)) == want
        assert len(files) == 3
    assert (transfer.local / "proj" / "src" / "main.py").read_bytes() == (
        tree / "src" / "main.py"
    ).read_bytes()


def test_download_of_a_missing_file_reports_no_file(transfer: Transfer) -> None:
    transfer.run("localhost:no-such-file", ".", ok=False)
    command, chunks = transfer.chunks()
    request = scp_command(command)
    assert request is not None
    assert observe_causal(request, chunks, random.Random(0), 5) == []


# -- hostile and broken streams (bytes written by hand) ------------------------------------

UPLOAD = ScpRequest(direction="upload", paths=(".",))
UPLOAD_R = ScpRequest(direction="upload", paths=(".",), recursive=True)


@pytest.mark.parametrize(
    ("request_", "source", "message"),
    [
        (UPLOAD, b"C0644 5 ../x\n", "unexpected file name '../x'"),
        (UPLOAD, b"C0644 5 ..\n", "unexpected file name '..'"),
        (UPLOAD, b"C0644 5 .\n", "unexpected file name '.'"),
        (UPLOAD, b"C0644 5 a/b\n", "unexpected file name"),
        (UPLOAD, b"C0644 5 /etc/passwd\n", "unexpected file name"),
        (UPLOAD, b"C0644 5 \n", "unexpected file name ''"),
        (UPLOAD, b"C0644 5 a\0b\n", "unexpected file name"),
        (UPLOAD, b"C644 5 x\n", "bad mode"),
        (UPLOAD, b"C0648 5 x\n", "bad mode"),
        (UPLOAD, b"C06440 5 x\n", "bad mode"),
        (UPLOAD, b"C0644 -5 x\n", "bad size"),
        (UPLOAD, b"C0644 5x x\n", "bad size"),
        (UPLOAD, b"C0644  x\n", "bad size"),
        (UPLOAD, b"C0644 99999999999999999999 x\n", "bad size"),
        (UPLOAD, b"C0644 5\n", "size not delimited"),
        (UPLOAD, b"D0755 0 d\n", "received a directory without -r"),
        (UPLOAD_R, b"E\n", "end of directory outside any directory"),
        (UPLOAD, b"T1 0 2\n", "bad times line"),
        (UPLOAD, b"T1 0 x 0\n", "bad atime"),
        (UPLOAD, b"Q0644 1 x\n", "expected a control line"),
        (UPLOAD, b"\n", "unexpected empty line"),
        (UPLOAD, b"C0644 1 " + b"n" * 5000, "line from the source too long"),
    ],
)
def test_malformed_source_lines(request_: ScpRequest, source: bytes, message: str) -> None:
    observer = ScpObserver(request_)
    observer.from_server(b"\0")  # the sink is ready
    with pytest.raises(ScpProtocolError) as err:
        observer.from_client(source)
    assert message in str(err.value)
    assert observer.ended
    with pytest.raises(ScpProtocolError, match="after the transfer ended"):
        observer.from_client(b"C0644 1 x\n")


def test_bad_ack_and_status_bytes() -> None:
    observer = ScpObserver(UPLOAD)
    with pytest.raises(ScpProtocolError, match="bad acknowledgement byte 0x07"):
        observer.from_server(b"\x07")
    observer = ScpObserver(UPLOAD)
    observer.from_server(b"\0")
    observer.from_client(b"C0644 3 x\n")
    observer.from_server(b"\0")
    with pytest.raises(ScpProtocolError, match="bad end-of-file status byte 0x05"):
        observer.from_client(b"abc\x05")


def test_nesting_is_bounded() -> None:
    observer = ScpObserver(UPLOAD_R)
    observer.from_server(b"\0")
    for _ in range(128):
        observer.from_client(b"D0755 0 d\n")
        observer.from_server(b"\0")
    with pytest.raises(ScpProtocolError, match="nested too deeply"):
        observer.from_client(b"D0755 0 d\n")


def test_bytes_out_of_turn_are_bounded() -> None:
    observer = ScpObserver(UPLOAD, max_pending=1 << 16)
    # the sink never said it is ready: a source that streams anyway is cut off
    observer.from_client(b"C0644 1000000 x\n")
    observer.from_client(b"\0" * 60000)
    with pytest.raises(ScpProtocolError, match="out of turn"):
        observer.from_client(b"\0" * 10000)


def test_names_are_escaped_for_logs() -> None:
    observer = ScpObserver(UPLOAD_R)
    observer.from_server(b"\0")
    observer.from_client(b"D0700 0 caf\xe9\n")
    observer.from_server(b"\0")
    observer.from_client(b"C0600 2 a\x1b[31m\\b\n")
    observer.from_server(b"\0")
    observer.from_client(b"hi\0")
    (record,) = observer.from_server(b"\0")
    assert record.path == "caf\\xe9/a\\x1b[31m\\\\b"
    assert record.mode == 0o600
    assert record.completed
    assert record.sha256 == sha(b"hi")


def test_interrupted_file_is_reported_with_the_hash_of_what_passed() -> None:
    observer = ScpObserver(UPLOAD)
    observer.from_server(b"\0")
    observer.from_client(b"C0644 10 part\n")
    observer.from_server(b"\0")
    assert observer.from_client(b"12345") == []
    (record,) = observer.close()
    assert record == ScpFile(
        direction="upload",
        path="part",
        mode=0o644,
        size=10,
        transferred=5,
        sha256=sha(b"12345"),
        completed=False,
        error="interrupted",
    )


def test_source_read_error_and_sink_write_error() -> None:
    observer = ScpObserver(UPLOAD)
    observer.from_server(b"\0")
    observer.from_client(b"C0644 3 a\n")
    observer.from_server(b"\0")
    observer.from_client(b"\0\0\0\x01scp: a: Input/output error\n")
    (record,) = observer.from_server(b"\0")
    assert not record.completed
    assert record.error == "scp: a: Input/output error"
    observer.from_client(b"C0644 1 b\n")
    observer.from_server(b"\0")
    observer.from_client(b"z\0")
    (record,) = observer.from_server(b"\x01scp: b: No space left on device\n")
    assert not record.completed
    assert record.transferred == 1
    assert record.error == "scp: b: No space left on device"


def test_fatal_error_ends_the_transfer() -> None:
    observer = ScpObserver(ScpRequest(direction="download", paths=("x",)))
    observer.from_client(b"\0")  # downloads: the client is the sink
    observer.from_server(b"C0644 4 x\n")
    (record,) = observer.from_client(b"\x02scp: fatal\n")
    assert not record.completed
    assert observer.ended
    with pytest.raises(ScpProtocolError, match="after the transfer ended"):
        observer.from_server(b"data")


# -- the command line ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "request_", "argv"),
    [
        ("scp -t .", ScpRequest("upload", (".",)), ["scp", "-t", "--", "."]),
        (
            "scp -v -r -p -d -t -- /srv/x",
            ScpRequest("upload", ("/srv/x",), True, True, True, True),
            ["scp", "-v", "-r", "-p", "-d", "-t", "--", "/srv/x"],
        ),
        ("scp -rpt dir", ScpRequest("upload", ("dir",), True, True), None),
        # what OpenSSH 9.2's client runs for `scp host:a host:b .`
        ("scp -d -f a", ScpRequest("download", ("a",), target_is_directory=True), None),
        ("scp -f 'my file' other", ScpRequest("download", ("my file", "other")), None),
        ('scp -t "a \\"b\\""', ScpRequest("upload", ('a "b"',)), None),
        ("scp -t a\\ b", ScpRequest("upload", ("a b",)), None),
        ("scp -f -- -weird", ScpRequest("download", ("-weird",)), ["scp", "-f", "--", "-weird"]),
        ("scp -t ~/up", ScpRequest("upload", ("~/up",)), ["scp", "-t", "--", "/home/a/up"]),
        ("scp -t ~", ScpRequest("upload", ("~",)), ["scp", "-t", "--", "/home/a"]),
        ("scp -t 'x~y'", ScpRequest("upload", ("x~y",)), ["scp", "-t", "--", "x~y"]),
        ("  scp\t-t  x  ", ScpRequest("upload", ("x",)), None),
        ("'scp' -t x", ScpRequest("upload", ("x",)), None),  # still plain scp once unquoted
        ("s\\cp -t x", ScpRequest("upload", ("x",)), None),
    ],
)
def test_scp_commands(command: str, request_: ScpRequest, argv: list[str] | None) -> None:
    assert scp_command(command) == request_
    if argv is not None:
        assert request_.argv(home="/home/a") == argv


@pytest.mark.parametrize("command", ["ls -l", "", "   ", "scpx -t .", "rsync -a x y", "sftp"])
def test_other_commands_are_not_scp(command: str) -> None:
    assert scp_command(command) is None


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("scp -t", "a non-empty path"),
        ("scp -t ''", "a non-empty path"),
        ("scp -t a b", "exactly one target"),
        ("scp -x -t a", "unsupported flag -x"),
        ("scp -S /tmp/evil -t a", "unsupported flag -S"),
        ("scp -t -f a", "exactly one of -t"),
        ("scp a", "exactly one of -t"),
        ("scp -t $(id)", "unquoted '$'"),
        ("scp -t `id`", "unquoted '`'"),
        ("scp -t a; rm -rf ~", "unquoted ';'"),
        ("scp -t a|b", "unquoted '|'"),
        ("scp -t a&", "unquoted '&'"),
        ("scp -t a>b", "unquoted '>'"),
        ("scp -t *.txt", "unquoted '*'"),
        ("scp -t {a,b}", "unquoted '{'"),
        ('scp -t "$HOME"', "would be expanded"),
        ("scp -t 'a", "unterminated single quote"),
        ('scp -t "a', "unterminated double quote"),
        ("scp -t a\\", "trailing backslash"),
        ("scp -t ~root/x", "no ~user"),
        ("scp -t '~/x'", "a quoted or escaped ~"),
        ("scp -t \\~/x", "a quoted or escaped ~"),
        ('scp -t "~"', "a quoted or escaped ~"),
        ("scp -t a\nrm x", "newlines"),
        ("/usr/bin/scp -t x", "plain 'scp'"),
        ("'/usr/bin/scp' -t x", "plain 'scp'"),
        ("s'c'p -x -t x", "unsupported flag -x"),
    ],
)
def test_odd_scp_commands_are_refused(command: str, message: str) -> None:
    with pytest.raises(InvalidInput) as err:
        scp_command(command)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("scp -t .", "command -p scp -t -- ."),
        ("scp -r -p -t ~/a\\ b", "command -p scp -r -p -t -- ~/'a b'"),
        ("scp -f ~ 'x;id' \"-o\"", "command -p scp -f -- ~ 'x;id' -o"),
        ("scp -d -t -- ~/", "command -p scp -d -t -- ~/"),
    ],
)
def test_shell_command_runs_the_system_scp_with_quoted_paths(command: str, expected: str) -> None:
    """The audited transfer runs this, never the command as sent: ``command -p`` finds the
    system's scp whatever the workspace's PATH holds."""
    request = scp_command(command)
    assert request is not None
    assert request.shell_command() == expected
