"""A hostile image publisher or key holder against image encrypt/decrypt/inspect.

Every attack is a small crafted OCI layout written here (no registry). The contract checked each
time: exit 2 for bad input or 1 for a failed check, one stderr line naming the layer or file, no
traceback, no output directory (nor a leftover temporary one), nothing written outside DST.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from stockade.cli import app
from stockade.images import parse_recipient
from stockade.images._keys import JWE_ANNOTATION, wrap_jwe
from tests.images.layouts import (
    KeyFiles,
    blob,
    make_key,
    read_manifest,
    rewrite_manifest,
)

PUBOPTS = "org.opencontainers.image.enc.pubopts"
STOCKADE = [sys.executable, "-c", "from stockade.cli import app; app()"]


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def assert_failed(code: int, err: str, out: Path, expected: int, *words: str) -> None:
    assert code == expected, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], lines[0]
    assert not out.exists()
    assert not out.is_symlink()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")] == []


def encrypt(src: Path, dst: Path, *keys: str, extra: tuple[str, ...] = ()) -> None:
    args = ["image", "encrypt", "-q", f"oci:{src}:v1", f"oci:{dst}:v1"]
    for key in keys:
        args += ["--encryption-key", key]
    code, _, err = run(*args, *extra)
    assert code == 0, err


def decrypt(src: Path, dst: Path, *keys: str) -> tuple[int, str, str]:
    args = ["image", "decrypt", "-q", f"oci:{src}:v1", f"oci:{dst}:v1"]
    for key in keys:
        args += ["--decryption-key", key]
    return run(*args)


def put(root: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs" / "sha256" / digest).write_bytes(data)
    return f"sha256:{digest}"


def set_layer(root: Path, n: int, **fields: Any) -> None:
    manifest = read_manifest(root)
    manifest["layers"][n].update(fields)
    rewrite_manifest(root, manifest)


def index_entry(root: Path) -> dict[str, Any]:
    entry: dict[str, Any] = json.loads((root / "index.json").read_text())["manifests"][0]
    return entry


# --- layout structure -------------------------------------------------------------------------


def test_symlinked_blob_to_a_file_outside_is_not_copied(
    layout: Path, tmp_path: Path, rsa_key: KeyFiles
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"the victim's secret\n")
    digest = read_manifest(layout)["layers"][0]["digest"]
    target = layout / "blobs" / "sha256" / digest.removeprefix("sha256:")
    target.unlink()
    target.symlink_to(secret)
    out = tmp_path / "enc"
    code, _, err = run(
        "image",
        "encrypt",
        "-q",
        f"oci:{layout}:v1",
        f"oci:{out}:v1",
        "--encryption-key",
        f"jwe:{rsa_key.public}",
    )
    assert code in {1, 2}, err
    assert_failed(code, err, out, code, "layer 0")


def test_fifo_blob_does_not_hang(layout: Path, tmp_path: Path, rsa_key: KeyFiles) -> None:
    """A blob that is a named pipe: reading it would block forever."""
    digest = index_entry(layout)["digest"]
    target = layout / "blobs" / "sha256" / digest.removeprefix("sha256:")
    target.unlink()
    os.mkfifo(target)
    out = tmp_path / "enc"
    try:
        proc = subprocess.run(
            [*STOCKADE, "image", "inspect", f"oci:{layout}:v1"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("inspect of a layout whose manifest blob is a FIFO hung")
    assert_failed(proc.returncode, proc.stderr, out, 2, digest)


def test_fifo_index_does_not_hang(layout: Path, tmp_path: Path) -> None:
    (layout / "index.json").unlink()
    os.mkfifo(layout / "index.json")
    out = tmp_path / "enc"
    try:
        proc = subprocess.run(
            [*STOCKADE, "image", "inspect", f"oci:{layout}:v1"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("inspect of a layout whose index.json is a FIFO hung")
    assert_failed(proc.returncode, proc.stderr, out, 2, "index.json")


@pytest.mark.parametrize("delta", [-1, 1])
def test_layer_size_differs_from_descriptor(
    layout: Path, tmp_path: Path, rsa_key: KeyFiles, delta: int
) -> None:
    layer = read_manifest(layout)["layers"][1]
    set_layer(layout, 1, size=layer["size"] + delta)
    out = tmp_path / "enc"
    code, _, err = run(
        "image",
        "encrypt",
        "-q",
        f"oci:{layout}:v1",
        f"oci:{out}:v1",
        "--encryption-key",
        f"jwe:{rsa_key.public}",
    )
    assert code in {1, 2}, err
    assert_failed(code, err, out, code, "layer 1")


def test_config_size_differs_from_descriptor(layout: Path, tmp_path: Path) -> None:
    manifest = read_manifest(layout)
    manifest["config"]["size"] += 5
    rewrite_manifest(layout, manifest)
    code, _, err = run("image", "inspect", f"oci:{layout}:v1")
    assert_failed(code, err, tmp_path / "none", 2, "config")


def test_two_manifests_for_the_tag_are_ambiguous(
    layout: Path, tmp_path: Path, rsa_key: KeyFiles
) -> None:
    """Two index entries both named v1: which one is 'the' image must not be a silent choice."""
    index = json.loads((layout / "index.json").read_text())
    manifest = read_manifest(layout)
    manifest["annotations"] = {"evil": "yes"}
    other = json.dumps(manifest).encode()
    second = {
        "mediaType": index["manifests"][0]["mediaType"],
        "digest": put(layout, other),
        "size": len(other),
        "annotations": {"org.opencontainers.image.ref.name": "v1"},
    }
    index["manifests"].append(second)
    (layout / "index.json").write_text(json.dumps(index))
    out = tmp_path / "enc"
    code, _, err = run(
        "image",
        "encrypt",
        "-q",
        f"oci:{layout}:v1",
        f"oci:{out}:v1",
        "--encryption-key",
        f"jwe:{rsa_key.public}",
    )
    assert_failed(code, err, out, 2, "v1")


@pytest.mark.parametrize("where", ["index.json", "manifest"])
def test_deeply_nested_json(layout: Path, tmp_path: Path, where: str) -> None:
    deep = b"[" * 200_000 + b"]" * 200_000
    if where == "index.json":
        (layout / "index.json").write_bytes(b'{"schemaVersion":2,"manifests":' + deep + b"}")
        word = "index.json"
    else:
        data = b'{"schemaVersion":2,"x":' + deep + b"}"
        digest = put(layout, data)
        index = json.loads((layout / "index.json").read_text())
        index["manifests"][0].update(digest=digest, size=len(data))
        (layout / "index.json").write_text(json.dumps(index))
        word = digest
    code, _, err = run("image", "inspect", f"oci:{layout}:v1")
    assert_failed(code, err, tmp_path / "none", 2, word)


def test_huge_manifest_refused(layout: Path, tmp_path: Path, rsa_key: KeyFiles) -> None:
    manifest = read_manifest(layout)
    manifest["layers"][0]["annotations"] = {JWE_ANNOTATION: "A" * (5 << 20)}
    rewrite_manifest(layout, manifest)
    code, _, err = run("image", "inspect", f"oci:{layout}:v1")
    assert_failed(code, err, tmp_path / "none", 2, "manifest")


# --- hostile encryption metadata --------------------------------------------------------------


@pytest.fixture
def encrypted(layout: Path, tmp_path: Path, rsa_key: KeyFiles) -> Path:
    enc = tmp_path / "enc"
    encrypt(layout, enc, f"jwe:{rsa_key.public}")
    return enc


def test_huge_jwe_annotation_of_garbage(encrypted: Path, tmp_path: Path, rsa_key: KeyFiles) -> None:
    junk = base64.b64encode(b"{" * (2 << 20)).decode()
    set_layer(encrypted, 0, annotations={**read_manifest(encrypted)["layers"][0]["annotations"]})
    manifest = read_manifest(encrypted)
    manifest["layers"][0]["annotations"][JWE_ANNOTATION] = junk
    rewrite_manifest(encrypted, manifest)
    out = tmp_path / "dec"
    code, _, err = decrypt(encrypted, out, str(rsa_key.private))
    assert_failed(code, err, out, 2, "layer 0")
    code, _, err = run("image", "inspect", f"oci:{encrypted}:v1")
    assert_failed(code, err, out, 2, "layer 0")


def test_deeply_nested_jwe(encrypted: Path, tmp_path: Path, rsa_key: KeyFiles) -> None:
    deep = b'{"recipients":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    manifest = read_manifest(encrypted)
    manifest["layers"][1]["annotations"][JWE_ANNOTATION] = base64.b64encode(deep).decode()
    rewrite_manifest(encrypted, manifest)
    out = tmp_path / "dec"
    code, _, err = decrypt(encrypted, out, str(rsa_key.private))
    assert_failed(code, err, out, 2, "layer 1")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "protected",
    [
        {"alg": "dir", "enc": "A256GCM"},
        {"alg": "none", "enc": "A256GCM"},
        {"alg": "RSA1_5", "enc": "A256GCM"},
        {"alg": "RSA-OAEP", "enc": "A128CBC-HS256"},
        {"alg": "RSA-OAEP", "enc": "none"},
    ],
)
def test_jwe_with_unexpected_alg_or_enc(
    encrypted: Path, tmp_path: Path, rsa_key: KeyFiles, protected: dict[str, str]
) -> None:
    doc = {
        "protected": _b64url(json.dumps(protected).encode()),
        "encrypted_key": _b64url(os.urandom(256)) if protected["alg"] != "dir" else "",
        "iv": _b64url(os.urandom(12)),
        "ciphertext": _b64url(os.urandom(64)),
        "tag": _b64url(os.urandom(16)),
    }
    manifest = read_manifest(encrypted)
    manifest["layers"][0]["annotations"][JWE_ANNOTATION] = base64.b64encode(
        json.dumps(doc).encode()
    ).decode()
    rewrite_manifest(encrypted, manifest)
    out = tmp_path / "dec"
    code, _, err = decrypt(encrypted, out, str(rsa_key.private))
    assert code in {1, 2}, err
    assert_failed(code, err, out, code, "layer 0")


def _rewrap(encrypted: Path, n: int, private: dict[str, Any], key: KeyFiles) -> None:
    """What a key holder can do: re-wrap crafted private options for a real recipient."""
    wrapped = wrap_jwe(json.dumps(private).encode(), [parse_recipient(f"jwe:{key.public}")])
    manifest = read_manifest(encrypted)
    manifest["layers"][n]["annotations"][JWE_ANNOTATION] = base64.b64encode(wrapped).decode()
    rewrite_manifest(encrypted, manifest)


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_private_options_symkey_of_wrong_length(
    encrypted: Path, tmp_path: Path, rsa_key: KeyFiles, length: int
) -> None:
    layer = read_manifest(encrypted)["layers"][0]
    private = {
        "symkey": base64.b64encode(os.urandom(length)).decode(),
        "digest": "sha256:" + "0" * 64,
        "cipheroptions": {"nonce": base64.b64encode(os.urandom(16)).decode()},
    }
    _rewrap(encrypted, 0, private, rsa_key)
    out = tmp_path / "dec"
    code, _, err = decrypt(encrypted, out, str(rsa_key.private))
    assert_failed(code, err, out, 2, "layer 0", "symkey")
    assert layer["digest"] in err


@pytest.mark.parametrize(
    "private",
    [
        [],
        {"symkey": 5},
        {"symkey": "AAAA", "digest": "sha256:" + "0" * 64, "cipheroptions": {"nonce": 7}},
        {"symkey": base64.b64encode(b"k" * 32).decode(), "cipheroptions": {}},
    ],
)
def test_private_options_of_wrong_shape(
    encrypted: Path, tmp_path: Path, rsa_key: KeyFiles, private: Any
) -> None:
    _rewrap(encrypted, 0, private, rsa_key)
    out = tmp_path / "dec"
    code, _, err = decrypt(encrypted, out, str(rsa_key.private))
    assert_failed(code, err, out, 2, "layer 0")


@pytest.mark.parametrize(
    "pubopts",
    [
        {"cipher": "AES_128_CTR_HMAC_SHA256", "hmac": "AAAA", "cipheroptions": {}},
        {"cipher": "NONE", "hmac": "", "cipheroptions": {}},
        {"hmac": base64.b64encode(b"h" * 32).decode()},
        {"cipher": "AES_256_CTR_HMAC_SHA256", "hmac": "AAAA", "cipheroptions": {}},
    ],
)
def test_pubopts_unknown_cipher_or_bad_hmac(
    encrypted: Path, tmp_path: Path, rsa_key: KeyFiles, pubopts: dict[str, Any]
) -> None:
    manifest = read_manifest(encrypted)
    manifest["layers"][1]["annotations"][PUBOPTS] = base64.b64encode(
        json.dumps(pubopts).encode()
    ).decode()
    rewrite_manifest(encrypted, manifest)
    out = tmp_path / "dec"
    code, _, err = decrypt(encrypted, out, str(rsa_key.private))
    assert_failed(code, err, out, 2, "layer 1")


def test_truncated_ciphertext_with_consistent_descriptor(
    encrypted: Path, tmp_path: Path, rsa_key: KeyFiles
) -> None:
    """The blob is cut and its descriptor re-pointed, so only the HMAC can catch it."""
    layer = read_manifest(encrypted)["layers"][1]
    data = blob(encrypted, layer["digest"])[:-100]
    set_layer(encrypted, 1, digest=put(encrypted, data), size=len(data))
    out = tmp_path / "dec"
    code, _, err = decrypt(encrypted, out, str(rsa_key.private))
    assert_failed(code, err, out, 1, "layer 1")


def test_empty_ciphertext(encrypted: Path, tmp_path: Path, rsa_key: KeyFiles) -> None:
    set_layer(encrypted, 0, digest=put(encrypted, b""), size=0)
    out = tmp_path / "dec"
    code, _, err = decrypt(encrypted, out, str(rsa_key.private))
    assert_failed(code, err, out, 1, "layer 0")


def test_encrypted_media_type_without_annotations(
    encrypted: Path, tmp_path: Path, rsa_key: KeyFiles
) -> None:
    set_layer(encrypted, 1, annotations={})
    out = tmp_path / "dec"
    code, _, err = decrypt(encrypted, out, str(rsa_key.private))
    assert_failed(code, err, out, 2, "layer 1")


# --- keys -------------------------------------------------------------------------------------


def test_rsa_1024_recipient_refused(layout: Path, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(65537, 1024)  # noqa: S505 - the attack
    pub = tmp_path / "small.pub.pem"
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    out = tmp_path / "enc"
    code, _, err = run(
        "image", "encrypt", "-q", f"oci:{layout}:v1", f"oci:{out}:v1", "--encryption-key",
        f"jwe:{pub}",
    )  # fmt: skip
    assert_failed(code, err, out, 2, "1024")


def test_wrong_key_for_one_of_several_layers(
    layout: Path, tmp_path: Path, rsa_key: KeyFiles, ec_key: KeyFiles
) -> None:
    first = tmp_path / "first"
    encrypt(layout, first, f"jwe:{rsa_key.public}", extra=("--encrypt-layer", "0"))
    both = tmp_path / "both"
    encrypt(first, both, f"jwe:{ec_key.public}", extra=("--encrypt-layer", "1"))
    assert all(x["mediaType"].endswith("+encrypted") for x in read_manifest(both)["layers"])
    out = tmp_path / "dec"
    code, _, err = decrypt(both, out, str(rsa_key.private))
    assert_failed(code, err, out, 1, "layer 1")
    code, _, err = decrypt(both, out, str(rsa_key.private), str(ec_key.private))
    assert code == 0, err


def test_decrypt_with_key_of_other_recipient_of_same_scheme(
    encrypted: Path, tmp_path: Path, keydir: Path
) -> None:
    stranger = make_key(keydir, "stranger", "ec")
    out = tmp_path / "dec"
    code, _, err = decrypt(encrypted, out, str(stranger.private))
    assert_failed(code, err, out, 1, "layer 0")


# --- destination ------------------------------------------------------------------------------


@pytest.mark.parametrize("dangling", [True, False])
def test_destination_is_a_symlink(
    encrypted: Path, tmp_path: Path, rsa_key: KeyFiles, dangling: bool
) -> None:
    elsewhere = tmp_path / "elsewhere"
    if not dangling:
        elsewhere.mkdir()
    out = tmp_path / "dec"
    out.symlink_to(elsewhere)
    code, _, err = decrypt(encrypted, out, str(rsa_key.private))
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1
    assert str(out) in err
    assert out.is_symlink()
    assert (not elsewhere.exists()) if dangling else list(elsewhere.iterdir()) == []


def test_destination_tag_cannot_traverse(
    encrypted: Path, tmp_path: Path, rsa_key: KeyFiles
) -> None:
    out = tmp_path / "dec"
    code, _, err = run(
        "image", "decrypt", "-q", f"oci:{encrypted}:v1", f"oci:{out}:../../x",
        "--decryption-key", str(rsa_key.private),
    )  # fmt: skip
    assert code == 2, err
    assert not (tmp_path / "x").exists()


# --- re-encryption ----------------------------------------------------------------------------


def test_encrypt_of_an_encrypted_layer(encrypted: Path, tmp_path: Path, ec_key: KeyFiles) -> None:
    out = tmp_path / "twice"
    code, _, err = run(
        "image", "encrypt", "-q", f"oci:{encrypted}:v1", f"oci:{out}:v1", "--encryption-key",
        f"jwe:{ec_key.public}", "--encrypt-layer", "1",
    )  # fmt: skip
    assert_failed(code, err, out, 2, "1", "already encrypted")
    # Without --encrypt-layer, encrypted layers pass through unchanged (not double-wrapped).
    encrypt(encrypted, out, f"jwe:{ec_key.public}")
    assert read_manifest(out)["layers"] == read_manifest(encrypted)["layers"]


# --- sbom inputs ------------------------------------------------------------------------------


def test_deeply_nested_bom_and_clearance_name_the_file(tmp_path: Path) -> None:
    from stockade.core.errors import InvalidInput
    from stockade.images import load_bom, load_clearance

    deep = b"[" * 200_000 + b"]" * 200_000
    with pytest.raises(InvalidInput, match=r"bom\.json"):
        load_bom(deep, "bom.json")
    path = tmp_path / "clearance.json"
    path.write_bytes(deep)
    with pytest.raises(InvalidInput, match=r"clearance\.json"):
        load_clearance(path)
