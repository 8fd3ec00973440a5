"""SSH public keys: fingerprints equal ssh-keygen's; weak and malformed keys are refused."""

from __future__ import annotations

import base64
import struct

import pytest

from stockade.core.errors import InvalidInput
from stockade.identity import fingerprint, parse_public_key
from tests.identity.conftest import GeneratedKey

ACCEPTED = [
    ("ed25519", "ssh-ed25519"),
    ("ecdsa-256", "ecdsa-sha2-nistp256"),
    ("ecdsa-384", "ecdsa-sha2-nistp384"),
    ("ecdsa-521", "ecdsa-sha2-nistp521"),
    ("rsa-3072", "ssh-rsa"),
    ("sk-ed25519", "sk-ssh-ed25519@openssh.com"),
    ("sk-ecdsa", "sk-ecdsa-sha2-nistp256@openssh.com"),
]


def _s(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _line(key_type: str, blob: bytes, comment: str = "") -> str:
    return f"{key_type} {base64.b64encode(blob).decode()} {comment}".strip()


@pytest.mark.parametrize(("name", "key_type"), ACCEPTED)
def test_fingerprint_bits_and_type_match_ssh_keygen(
    keygen_keys: dict[str, GeneratedKey], name: str, key_type: str
) -> None:
    generated = keygen_keys[name]
    parsed = parse_public_key(generated.line)
    assert parsed.fingerprint == generated.fingerprint
    assert parsed.bits == generated.bits
    assert parsed.key_type == key_type
    assert parsed.public_key == " ".join(generated.line.split()[:2])
    assert parsed.comment == generated.line.split(None, 2)[2]


def test_surrounding_whitespace_and_missing_comment(keygen_keys: dict[str, GeneratedKey]) -> None:
    bare = " ".join(keygen_keys["ed25519"].line.split()[:2])
    parsed = parse_public_key(f"  {bare}  \n")
    assert parsed.comment == ""
    assert parsed.fingerprint == keygen_keys["ed25519"].fingerprint


def test_fingerprint_of_a_blob() -> None:
    blob = _s(b"ssh-ed25519") + _s(bytes(32))
    # ssh-keygen strips base64 padding from SHA256 fingerprints.
    assert fingerprint(blob).startswith("SHA256:")
    assert not fingerprint(blob).endswith("=")
    assert len(fingerprint(blob)) == len("SHA256:") + 43


def test_weak_rsa_is_refused_naming_the_size(keygen_keys: dict[str, GeneratedKey]) -> None:
    with pytest.raises(InvalidInput, match="2048 bits is too weak; at least 3072"):
        parse_public_key(keygen_keys["rsa-2048"].line)


def test_min_rsa_bits_is_a_setting(keygen_keys: dict[str, GeneratedKey]) -> None:
    parsed = parse_public_key(keygen_keys["rsa-2048"].line, min_rsa_bits=2048)
    assert parsed.bits == 2048
    assert parsed.fingerprint == keygen_keys["rsa-2048"].fingerprint


def test_dsa_is_refused(keygen_keys: dict[str, GeneratedKey]) -> None:
    with pytest.raises(InvalidInput, match="DSA keys are weak"):
        parse_public_key(keygen_keys["dsa"].line)


def _ed25519_blob() -> bytes:
    return _s(b"ssh-ed25519") + _s(base64.b64decode("2qIFn0k0ra0XU6m2YgRwl1x+NQbCK2IMTOjMIuS4zUo="))


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("", "empty key"),
        ("   ", "empty key"),
        ("ssh-ed25519", "missing base64"),
        ("ssh-ed25519 !!!notbase64!!!", "not valid base64"),
        ("ssh-foo AAAA", "unsupported key type 'ssh-foo'"),
        ("ssh-ed25519-cert-v01@openssh.com AAAA", "certificates are not accepted"),
        (_line("ssh-rsa", _ed25519_blob()), "key data is of type 'ssh-ed25519' but the line says"),
        (_line("ssh-ed25519", _ed25519_blob() + b"\0"), "trailing bytes"),
        (_line("ssh-ed25519", _ed25519_blob()[:-5]), "truncated key data"),
        (_line("ssh-ed25519", _s(b"ssh-ed25519") + _s(bytes(31))), "must be 32 bytes"),
        (
            _line(
                "ecdsa-sha2-nistp256",
                _s(b"ecdsa-sha2-nistp256") + _s(b"nistp256") + _s(b"\x04" + bytes(64)),
            ),
            "invalid nistp256 point",
        ),
        (
            _line(
                "ecdsa-sha2-nistp256", _s(b"ecdsa-sha2-nistp256") + _s(b"nistp384") + _s(b"\x04")
            ),
            "curve does not match",
        ),
        (_line("ssh-ed25519", _ed25519_blob(), "evil\x1b[2Jcomment"), "control characters"),
        (
            _line("ssh-ed25519", _ed25519_blob()) + "\n" + _line("ssh-ed25519", _ed25519_blob()),
            "more than one line",
        ),
        (_line("ssh-ed25519", _ed25519_blob(), "x" * 300), "comment longer than 256"),
        ("ssh-ed25519 " + "A" * 20000, "longer than 16384"),
    ],
)
def test_malformed_keys_name_the_problem(line: str, problem: str) -> None:
    with pytest.raises(InvalidInput, match=problem) as info:
        parse_public_key(line)
    assert info.value.field == "ssh key"


def test_authorized_keys_options_are_refused(keygen_keys: dict[str, GeneratedKey]) -> None:
    with pytest.raises(InvalidInput, match="options are not supported"):
        parse_public_key(f'from="10.0.0.0/8",no-pty {keygen_keys["ed25519"].line}')


def test_rsa_with_an_invalid_exponent_is_refused() -> None:
    modulus = (1 << 3071) | 1
    n = modulus.to_bytes(384, "big")
    blob = _s(b"ssh-rsa") + _s(b"\x02") + _s(b"\x00" + n)  # e = 2 is not a valid exponent
    with pytest.raises(InvalidInput, match="invalid RSA public key"):
        parse_public_key(_line("ssh-rsa", blob))
