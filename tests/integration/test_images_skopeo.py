"""Interop with Debian's skopeo, both ways: RSA, EC P-256, two recipients, and pkcs7.

skopeo encrypts and Stockade decrypts; Stockade encrypts and ``skopeo copy --decryption-key``
decrypts. Every round trip must end with the original layer digests.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stockade.cli import app
from tests.conftest import IN_CI
from tests.images.layouts import KeyFiles, layer_digests, make_key, read_manifest, write_layout

SKOPEO = shutil.which("skopeo")
if SKOPEO is None:
    if IN_CI:
        pytest.fail("skopeo is not installed (apt-get install -y skopeo)", pytrace=False)
    pytest.skip("skopeo is not installed (apt-get install -y skopeo)", allow_module_level=True)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyFiles]:
    d = tmp_path_factory.mktemp("skopeo-keys")
    return {"rsa": make_key(d, "rsa", "rsa"), "ec": make_key(d, "ec", "ec")}


def skopeo(*args: str) -> None:
    proc = subprocess.run(
        [str(SKOPEO), "--insecure-policy", "copy", "-q", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def stockade(*args: str) -> None:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.stderr


def source(tmp_path: Path) -> Path:
    return write_layout(
        tmp_path / "src", [{"etc/os-release": b"ID=test\n"}, {"opt/data": bytes(range(256)) * 400}]
    )


SCENARIOS = {
    "rsa": (["rsa"], ["rsa"]),
    "ec": (["ec"], ["ec"]),
    "two-recipients-rsa-opens": (["rsa", "ec"], ["rsa"]),
    "two-recipients-ec-opens": (["rsa", "ec"], ["ec"]),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_skopeo_encrypts_stockade_decrypts(
    tmp_path: Path, keys: dict[str, KeyFiles], scenario: str
) -> None:
    recipients, openers = SCENARIOS[scenario]
    src = source(tmp_path)
    enc = tmp_path / "enc"
    args = [a for r in recipients for a in ("--encryption-key", f"jwe:{keys[r].public}")]
    skopeo(*args, f"oci:{src}:v1", f"oci:{enc}:v1")
    assert all(layer["mediaType"].endswith("+encrypted") for layer in read_manifest(enc)["layers"])
    dec = tmp_path / "dec"
    stockade(
        "image", "decrypt", "-q", f"oci:{enc}:v1", f"oci:{dec}:v1",
        *[a for o in openers for a in ("--decryption-key", str(keys[o].private))],
    )  # fmt: skip
    assert layer_digests(dec) == layer_digests(src)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_stockade_encrypts_skopeo_decrypts(
    tmp_path: Path, keys: dict[str, KeyFiles], scenario: str
) -> None:
    recipients, openers = SCENARIOS[scenario]
    src = source(tmp_path)
    enc = tmp_path / "enc"
    stockade(
        "image", "encrypt", "-q", f"oci:{src}:v1", f"oci:{enc}:v1",
        *[a for r in recipients for a in ("--encryption-key", f"jwe:{keys[r].public}")],
    )  # fmt: skip
    dec = tmp_path / "dec"
    skopeo(
        *[a for o in openers for a in ("--decryption-key", str(keys[o].private))],
        f"oci:{enc}:v1",
        f"oci:{dec}:v1",
    )
    assert layer_digests(dec) == layer_digests(src)


def test_pkcs7_both_ways(tmp_path: Path, keys: dict[str, KeyFiles]) -> None:
    rsa = keys["rsa"]
    src = source(tmp_path)
    enc = tmp_path / "enc-skopeo"
    skopeo("--encryption-key", f"pkcs7:{rsa.cert}", f"oci:{src}:v1", f"oci:{enc}:v1")
    dec = tmp_path / "dec-stockade"
    stockade(
        "image",
        "decrypt",
        "-q",
        f"oci:{enc}:v1",
        f"oci:{dec}:v1",
        "--key",
        str(rsa.private),
        "--key",
        str(rsa.cert),
    )
    assert layer_digests(dec) == layer_digests(src)
    enc2 = tmp_path / "enc-stockade"
    stockade(
        "image",
        "encrypt",
        "-q",
        f"oci:{src}:v1",
        f"oci:{enc2}:v1",
        "--recipient",
        f"pkcs7:{rsa.cert}",
    )
    dec2 = tmp_path / "dec-skopeo"
    skopeo(
        "--decryption-key",
        str(rsa.private),
        "--decryption-key",
        str(rsa.cert),
        f"oci:{enc2}:v1",
        f"oci:{dec2}:v1",
    )
    assert layer_digests(dec2) == layer_digests(src)


def test_only_selected_layer_for_skopeo(tmp_path: Path, keys: dict[str, KeyFiles]) -> None:
    """skopeo's own --encrypt-layer and ours agree on which layer -1 is."""
    src = source(tmp_path)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    stockade("image", "encrypt", "-q", f"oci:{src}:v1", f"oci:{ours}:v1",
             "--encryption-key", f"jwe:{keys['ec'].public}", "--encrypt-layer", "-1")  # fmt: skip
    skopeo("--encryption-key", f"jwe:{keys['ec'].public}", "--encrypt-layer", "-1",
           f"oci:{src}:v1", f"oci:{theirs}:v1")  # fmt: skip

    def kinds(p: Path) -> list[str]:
        return [layer["mediaType"] for layer in read_manifest(p)["layers"]]

    assert kinds(ours) == kinds(theirs)


def test_skopeo_encrypted_layer_tampered_fails_our_hmac(
    tmp_path: Path, keys: dict[str, KeyFiles]
) -> None:
    """A flipped byte in a skopeo-encrypted layer, digest and manifest recomputed: HMAC fails."""
    from tests.images.layouts import blob, replace_blob

    src = source(tmp_path)
    enc = tmp_path / "enc"
    skopeo("--encryption-key", f"jwe:{keys['rsa'].public}", f"oci:{src}:v1", f"oci:{enc}:v1")
    old = layer_digests(enc)[0]
    data = bytearray(blob(enc, old))
    data[-1] ^= 0x01
    replace_blob(enc, old, bytes(data))
    result = CliRunner().invoke(
        app,
        [
            "image",
            "decrypt",
            f"oci:{enc}:v1",
            f"oci:{tmp_path}/dec",
            "--key",
            str(keys["rsa"].private),
        ],
    )
    assert result.exit_code == 1
    assert "HMAC" in result.stderr
    assert not (tmp_path / "dec").exists()
    inspected = CliRunner().invoke(app, ["image", "inspect", f"oci:{enc}:v1", "--json"])
    assert inspected.exit_code == 0
    recipients = json.loads(inspected.stdout)["layers"][0]["recipients"]
    assert [r["algorithm"] for r in recipients] == ["RSA-OAEP"]
