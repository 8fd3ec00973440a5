"""Layer encryption end to end in-process, through the CLI: round trips, tampering, bad input.

Each hostile case checks the contract: one stderr line naming the layer or file, exit 2 for bad
input or 1 for a failed check, and no output directory (nor a leftover temporary one).
"""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stockade.cli import app
from tests.images.layouts import (
    KeyFiles,
    blob,
    layer_digests,
    read_manifest,
    replace_blob,
    rewrite_manifest,
    write_layout,
)


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def assert_failed(code: int, err: str, out: Path, expected: int, *words: str) -> None:
    assert code == expected, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], lines[0]
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")] == []


def encrypt(src: Path, dst: Path, *keys: str, extra: tuple[str, ...] = ()) -> None:
    args = ["image", "encrypt", "-q", f"oci:{src}:v1", f"oci:{dst}:v1"]
    for key in keys:
        args += ["--encryption-key", key]
    code, _, err = run(*args, *extra)
    assert code == 0, err


@pytest.mark.parametrize("scheme", ["jwe-rsa", "jwe-ec", "jwe-both", "pkcs7", "jwe-and-pkcs7"])
def test_round_trip(
    layout: Path, tmp_path: Path, rsa_key: KeyFiles, ec_key: KeyFiles, scheme: str
) -> None:
    keys = {
        "jwe-rsa": [f"jwe:{rsa_key.public}"],
        "jwe-ec": [f"jwe:{ec_key.public}"],
        "jwe-both": [f"jwe:{rsa_key.public}", f"jwe:{ec_key.public}"],
        "pkcs7": [f"pkcs7:{rsa_key.cert}"],
        "jwe-and-pkcs7": [f"jwe:{ec_key.public}", f"pkcs7:{rsa_key.cert}"],
    }[scheme]
    enc = tmp_path / "enc"
    encrypt(layout, enc, *keys)
    manifest = read_manifest(enc)
    assert all(layer["mediaType"].endswith("+gzip+encrypted") for layer in manifest["layers"])
    assert set(layer_digests(enc)).isdisjoint(layer_digests(layout))
    assert manifest["config"] == read_manifest(layout)["config"]
    decryptors = {
        "jwe-rsa": [[str(rsa_key.private)]],
        "jwe-ec": [[str(ec_key.private)]],
        "jwe-both": [[str(rsa_key.private)], [str(ec_key.private)]],
        "pkcs7": [[str(rsa_key.private), str(rsa_key.cert)], [str(rsa_key.private)]],
        "jwe-and-pkcs7": [[str(ec_key.private)], [str(rsa_key.private)]],
    }[scheme]
    for n, files in enumerate(decryptors):
        dec = tmp_path / f"dec{n}"
        args = ["image", "decrypt", "-q", f"oci:{enc}:v1", f"oci:{dec}:v1"]
        for f in files:
            args += ["--decryption-key", f]
        code, _, err = run(*args)
        assert code == 0, err
        assert layer_digests(dec) == layer_digests(layout)
        assert "annotations" not in read_manifest(dec)["layers"][0]


def test_annotations_in_ocicrypt_format(layout: Path, tmp_path: Path, ec_key: KeyFiles) -> None:
    enc = tmp_path / "enc"
    encrypt(layout, enc, f"jwe:{ec_key.public}")
    annotations = read_manifest(enc)["layers"][0]["annotations"]
    pub = json.loads(base64.b64decode(annotations["org.opencontainers.image.enc.pubopts"]))
    assert list(pub) == ["cipher", "hmac", "cipheroptions"]
    assert pub["cipher"] == "AES_256_CTR_HMAC_SHA256"
    assert len(base64.b64decode(pub["hmac"])) == 32
    jwe = json.loads(base64.b64decode(annotations["org.opencontainers.image.enc.keys.jwe"]))
    assert jwe["header"]["alg"] == "ECDH-ES+A256KW"
    protected = json.loads(base64.urlsafe_b64decode(jwe["protected"] + "=="))
    assert protected["enc"] == "A256GCM"


def test_encrypt_layer_selects_by_index(layout: Path, tmp_path: Path, rsa_key: KeyFiles) -> None:
    enc = tmp_path / "enc"
    encrypt(layout, enc, f"jwe:{rsa_key.public}", extra=("--encrypt-layer", "-1"))
    types = [layer["mediaType"] for layer in read_manifest(enc)["layers"]]
    assert types == [
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
    ]
    assert layer_digests(enc)[0] == layer_digests(layout)[0]
    code, out, _ = run("image", "inspect", f"oci:{enc}:v1", "--json")
    assert code == 0
    layers = json.loads(out)["layers"]
    assert [layer["encrypted"] for layer in layers] == [False, True]
    assert layers[1]["recipients"][0]["algorithm"] == "RSA-OAEP"
    assert len(layers[1]["recipients"][0]["key_id"]) == 43  # full SHA-256 thumbprint


def test_encrypt_layer_out_of_range(layout: Path, tmp_path: Path, rsa_key: KeyFiles) -> None:
    out = tmp_path / "enc"
    code, _, err = run(
        "image", "encrypt", f"oci:{layout}:v1", f"oci:{out}", "--encryption-key",
        f"jwe:{rsa_key.public}", "--encrypt-layer", "2",
    )  # fmt: skip
    assert_failed(code, err, out, 2, "--encrypt-layer", "out of range")


def _decrypt(enc: Path, dst: Path, key: Path) -> tuple[int, str]:
    code, _, err = run(
        "image", "decrypt", f"oci:{enc}:v1", f"oci:{dst}", "--decryption-key", str(key)
    )
    return code, err


def test_flipped_byte_fails_hmac(layout: Path, tmp_path: Path, rsa_key: KeyFiles) -> None:
    enc = tmp_path / "enc"
    encrypt(layout, enc, f"jwe:{rsa_key.public}")
    old = layer_digests(enc)[1]
    data = bytearray(blob(enc, old))
    data[len(data) // 2] ^= 0x01
    replace_blob(enc, old, bytes(data))  # digest and manifest recomputed: only the HMAC can tell
    out = tmp_path / "dec"
    code, err = _decrypt(enc, out, rsa_key.private)
    assert_failed(code, err, out, 1, "layer 1", "HMAC")


def test_flipped_byte_without_recomputing_fails_digest(
    layout: Path, tmp_path: Path, rsa_key: KeyFiles
) -> None:
    enc = tmp_path / "enc"
    encrypt(layout, enc, f"jwe:{rsa_key.public}")
    path = enc / "blobs" / "sha256" / layer_digests(enc)[0].removeprefix("sha256:")
    data = bytearray(path.read_bytes())
    data[3] ^= 0x80
    path.write_bytes(bytes(data))
    out = tmp_path / "dec"
    code, err = _decrypt(enc, out, rsa_key.private)
    assert_failed(code, err, out, 1, "layer 0", "does not match its descriptor")


def test_wrong_private_digest_fails_digest_check(
    layout: Path, tmp_path: Path, rsa_key: KeyFiles
) -> None:
    """The attacker holds a recipient key and rewraps private options with a wrong digest:
    HMAC passes (same key, same ciphertext) and only the plaintext digest check catches it."""
    from stockade.images import load_decryption_keys, parse_recipient
    from stockade.images._keys import unwrap_jwe, wrap_jwe

    enc = tmp_path / "enc"
    encrypt(layout, enc, f"jwe:{rsa_key.public}")
    manifest = read_manifest(enc)
    layer = manifest["layers"][0]
    name = "org.opencontainers.image.enc.keys.jwe"
    keys = load_decryption_keys([str(rsa_key.private)])
    plain = unwrap_jwe(base64.b64decode(layer["annotations"][name]), keys, "test")
    assert plain is not None
    opts = json.loads(plain)
    opts["digest"] = "sha256:" + "0" * 64
    rewrapped = wrap_jwe(json.dumps(opts).encode(), [parse_recipient(f"jwe:{rsa_key.public}")])
    layer["annotations"][name] = base64.b64encode(rewrapped).decode()
    rewrite_manifest(enc, manifest)
    out = tmp_path / "dec"
    code, err = _decrypt(enc, out, rsa_key.private)
    assert_failed(code, err, out, 1, "layer 0", "does not match", "private options")


def test_wrong_key_is_refused(
    layout: Path, tmp_path: Path, rsa_key: KeyFiles, other_key: KeyFiles
) -> None:
    enc = tmp_path / "enc"
    encrypt(layout, enc, f"jwe:{rsa_key.public}", f"pkcs7:{rsa_key.cert}")
    out = tmp_path / "dec"
    code, err = _decrypt(enc, out, other_key.private)
    assert_failed(code, err, out, 1, "layer 0", "none of the decryption keys", "recipient")


def test_public_key_as_decryption_key(layout: Path, tmp_path: Path, rsa_key: KeyFiles) -> None:
    enc = tmp_path / "enc"
    encrypt(layout, enc, f"jwe:{rsa_key.public}")
    out = tmp_path / "dec"
    code, err = _decrypt(enc, out, rsa_key.public)
    assert_failed(code, err, out, 2, str(rsa_key.public), "public key")


def test_key_of_wrong_type(layout: Path, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    pub = tmp_path / "ed.pub"
    pub.write_bytes(
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    out = tmp_path / "enc"
    code, _, err = run(
        "image", "encrypt", f"oci:{layout}:v1", f"oci:{out}", "--encryption-key", f"jwe:{pub}"
    )
    assert_failed(code, err, out, 2, str(pub), "wrong key type")


def test_jwe_that_does_not_parse(layout: Path, tmp_path: Path, rsa_key: KeyFiles) -> None:
    enc = tmp_path / "enc"
    encrypt(layout, enc, f"jwe:{rsa_key.public}")
    manifest = read_manifest(enc)
    manifest["layers"][0]["annotations"]["org.opencontainers.image.enc.keys.jwe"] = (
        base64.b64encode(b"{not json").decode()
    )
    rewrite_manifest(enc, manifest)
    out = tmp_path / "dec"
    code, err = _decrypt(enc, out, rsa_key.private)
    assert_failed(code, err, out, 2, "layer 0", "JWE does not parse")


def test_truncated_blob(layout: Path, tmp_path: Path, rsa_key: KeyFiles) -> None:
    path = layout / "blobs" / "sha256" / layer_digests(layout)[1].removeprefix("sha256:")
    path.write_bytes(path.read_bytes()[:-10])
    out = tmp_path / "enc"
    code, _, err = run(
        "image",
        "encrypt",
        f"oci:{layout}:v1",
        f"oci:{out}",
        "--encryption-key",
        f"jwe:{rsa_key.public}",
    )
    assert_failed(code, err, out, 2, "layer 1", "truncated")


def test_not_an_oci_layout(tmp_path: Path, rsa_key: KeyFiles) -> None:
    src = tmp_path / "plain"
    src.mkdir()
    (src / "index.json").write_text("{}")
    out = tmp_path / "enc"
    code, _, err = run(
        "image", "encrypt", f"oci:{src}", f"oci:{out}", "--encryption-key", f"jwe:{rsa_key.public}"
    )
    assert_failed(code, err, out, 2, str(src), "not an OCI image layout")


def test_missing_tag(layout: Path, tmp_path: Path, rsa_key: KeyFiles) -> None:
    out = tmp_path / "enc"
    code, _, err = run(
        "image",
        "encrypt",
        f"oci:{layout}:nope",
        f"oci:{out}",
        "--encryption-key",
        f"jwe:{rsa_key.public}",
    )
    assert_failed(code, err, out, 2, "nope", "not found")


def test_non_oci_media_type(layout: Path, tmp_path: Path, rsa_key: KeyFiles) -> None:
    manifest = read_manifest(layout)
    manifest["layers"][0]["mediaType"] = "application/x-evil"
    rewrite_manifest(layout, manifest)
    out = tmp_path / "enc"
    code, _, err = run(
        "image",
        "encrypt",
        f"oci:{layout}:v1",
        f"oci:{out}",
        "--encryption-key",
        f"jwe:{rsa_key.public}",
    )
    assert_failed(code, err, out, 2, "layer 0", "not an OCI layer type")


def test_digest_cannot_escape_blobs(layout: Path, tmp_path: Path, rsa_key: KeyFiles) -> None:
    manifest = read_manifest(layout)
    manifest["layers"][0]["digest"] = "sha256:../../../../etc/passwd"
    rewrite_manifest(layout, manifest)
    out = tmp_path / "enc"
    code, _, err = run(
        "image",
        "encrypt",
        f"oci:{layout}:v1",
        f"oci:{out}",
        "--encryption-key",
        f"jwe:{rsa_key.public}",
    )
    assert_failed(code, err, out, 2, "layer 0", "64 hex")


def test_destination_exists(layout: Path, tmp_path: Path, rsa_key: KeyFiles) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    code, _, err = run(
        "image",
        "encrypt",
        f"oci:{layout}:v1",
        f"oci:{out}",
        "--encryption-key",
        f"jwe:{rsa_key.public}",
    )
    assert code == 2
    assert "exists already" in err
    assert list(out.iterdir()) == []


def test_passphrase_on_command_line_refused(layout: Path, tmp_path: Path) -> None:
    out = tmp_path / "dec"
    code, _, err = run(
        "image", "decrypt", f"oci:{layout}:v1", f"oci:{out}", "--key", "k.pem:secret"
    )
    assert_failed(code, err, out, 2, "--passphrase-env")
    assert "secret" not in err


def test_layout_with_index_picks_platform(tmp_path: Path, rsa_key: KeyFiles) -> None:
    """An image index with two platforms: --platform chooses; an absent platform is refused."""
    import hashlib

    src = write_layout(tmp_path / "src", [{"a": b"amd"}])
    index = json.loads((src / "index.json").read_text())
    amd = index["manifests"][0]
    other = write_layout(tmp_path / "other", [{"b": b"arm" * 10}])
    arm = json.loads((other / "index.json").read_text())["manifests"][0]
    for p in (other / "blobs" / "sha256").iterdir():
        (src / "blobs" / "sha256" / p.name).write_bytes(p.read_bytes())
    nested = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {**amd, "platform": {"os": "linux", "architecture": "amd64"}},
            {**arm, "platform": {"os": "linux", "architecture": "arm64"}},
        ],
    }  # fmt: skip
    raw = json.dumps(nested).encode()
    digest = hashlib.sha256(raw).hexdigest()
    (src / "blobs" / "sha256" / digest).write_bytes(raw)
    index["manifests"] = [
        {
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": f"sha256:{digest}",
            "size": len(raw),
            "annotations": {"org.opencontainers.image.ref.name": "v1"},
        }
    ]
    (src / "index.json").write_text(json.dumps(index))
    enc = tmp_path / "enc"
    encrypt(src, enc, f"jwe:{rsa_key.public}", extra=("--platform", "linux/arm64"))
    dec = tmp_path / "dec"
    code, err = _decrypt(enc, dec, rsa_key.private)
    assert code == 0, err
    assert layer_digests(dec) == layer_digests(other)
    out = tmp_path / "none"
    code, _, err = run(
        "image", "encrypt", f"oci:{src}:v1", f"oci:{out}", "--encryption-key",
        f"jwe:{rsa_key.public}", "--platform", "windows/amd64",
    )  # fmt: skip
    assert_failed(code, err, out, 2, "windows/amd64")


def test_decrypted_layer_is_the_original_tar(
    layout: Path, tmp_path: Path, ec_key: KeyFiles
) -> None:
    enc = tmp_path / "enc"
    encrypt(layout, enc, f"jwe:{ec_key.public}")
    dec = tmp_path / "dec"
    code, err = _decrypt(enc, dec, ec_key.private)
    assert code == 0, err
    raw = gzip.decompress(blob(dec, layer_digests(dec)[0]))
    assert b"hello\n" * 10 in raw
