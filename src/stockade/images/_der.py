"""The little DER that ocicrypt's PKCS#7 key wrapping needs: encode a few types, walk a TLV tree.

Only what the ``org.opencontainers.image.enc.keys.pkcs7`` envelope uses (SEQUENCE, SET, INTEGER,
OCTET STRING, OBJECT IDENTIFIER, context tags). Parsing is bounded: a length that runs past its
parent, an indefinite length or a length of more than four bytes is an error, never a guess.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DerError", "Tlv", "encode", "integer", "octets", "oid", "parse", "parse_oid", "seq"]

SEQUENCE = 0x30
SET = 0x31
INTEGER = 0x02
OCTET_STRING = 0x04
OBJECT_IDENTIFIER = 0x06


class DerError(ValueError):
    """The bytes are not the DER structure expected; the message says where."""


@dataclass(frozen=True, slots=True)
class Tlv:
    """One DER element: its identifier octet, its content and (for constructed ones) children."""

    tag: int
    content: bytes

    @property
    def constructed(self) -> bool:
        """Whether the identifier octet has the constructed bit (children can be parsed)."""
        return bool(self.tag & 0x20)

    def children(self) -> list[Tlv]:
        """The elements inside this one (its content parsed as a sequence of TLVs)."""
        return parse(self.content)


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def encode(tag: int, content: bytes) -> bytes:
    """One TLV with ``tag`` as its identifier octet."""
    return bytes([tag]) + _length(len(content)) + content


def seq(*items: bytes, tag: int = SEQUENCE) -> bytes:
    """A SEQUENCE (or another constructed ``tag``) of already-encoded ``items``."""
    return encode(tag, b"".join(items))


def integer(value: int) -> bytes:
    """A DER INTEGER (two's complement, minimal length)."""
    length = max(1, (value.bit_length() + 8) // 8) if value >= 0 else (value.bit_length() + 8) // 8
    return encode(INTEGER, value.to_bytes(length, "big", signed=True))


def octets(value: bytes, tag: int = OCTET_STRING) -> bytes:
    """An OCTET STRING (or an implicitly tagged one)."""
    return encode(tag, value)


def oid(dotted: str) -> bytes:
    """An OBJECT IDENTIFIER from its dotted form."""
    parts = [int(p) for p in dotted.split(".")]
    body = bytearray([parts[0] * 40 + parts[1]])
    for part in parts[2:]:
        chunk = [part & 0x7F]
        part >>= 7
        while part:
            chunk.append(0x80 | (part & 0x7F))
            part >>= 7
        body.extend(reversed(chunk))
    return encode(OBJECT_IDENTIFIER, bytes(body))


def parse_oid(content: bytes) -> str:
    """The dotted form of an OBJECT IDENTIFIER's content octets."""
    if not content:
        raise DerError("empty object identifier")
    first = content[0]
    parts = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    value = 0
    for byte in content[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(value)
            value = 0
    if content[-1] & 0x80:
        raise DerError("truncated object identifier")
    return ".".join(str(p) for p in parts)


def parse(data: bytes) -> list[Tlv]:
    """The TLVs that make up ``data`` exactly (trailing garbage is an error)."""
    out: list[Tlv] = []
    pos = 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise DerError(f"truncated element at offset {pos}")
        tag = data[pos]
        if tag & 0x1F == 0x1F:
            raise DerError(f"multi-byte tag at offset {pos}")
        first = data[pos + 1]
        pos += 2
        if first < 0x80:
            length = first
        else:
            count = first & 0x7F
            if count == 0 or count > 4:
                raise DerError(f"unsupported length encoding at offset {pos - 1}")
            if pos + count > len(data):
                raise DerError(f"truncated length at offset {pos}")
            length = int.from_bytes(data[pos : pos + count], "big")
            pos += count
        if pos + length > len(data):
            raise DerError(f"element at offset {pos} runs past its container")
        out.append(Tlv(tag, data[pos : pos + length]))
        pos += length
    return out
