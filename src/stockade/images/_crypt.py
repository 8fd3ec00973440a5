"""Encrypt, decrypt and inspect images in OCI layouts, layer by layer, as ocicrypt does.

Encrypting a layer changes its descriptor only: media type gains ``+encrypted``, digest and size
become the ciphertext's, and two annotations are added, the wrapped keys
(``org.opencontainers.image.enc.keys.jwe`` and/or ``...keys.pkcs7``, each a comma-separated list
of base64 blobs) and ``org.opencontainers.image.enc.pubopts``. The config (with its diff_ids)
is untouched. Decrypting reverses it and drops every ``org.opencontainers.image.enc.*``
annotation.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from stockade.core.errors import InvalidInput

from . import _keys
from ._cipher import PrivateOptions, PublicOptions, decrypt_stream, encrypt_stream
from ._errors import IntegrityError
from ._keys import DecryptionKey, Recipient, RecipientInfo
from ._layout import ImageRef, Layout, LayoutWriter, Platform, ResolvedImage

__all__ = [
    "ENC_PREFIX",
    "PUBOPTS_ANNOTATION",
    "CryptSummary",
    "LayerInfo",
    "decrypt_image",
    "encrypt_image",
    "inspect_image",
    "select_layers",
]

ENC_PREFIX = "org.opencontainers.image.enc."
PUBOPTS_ANNOTATION = "org.opencontainers.image.enc.pubopts"
_SUFFIX = "+encrypted"

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class LayerInfo:
    """One layer as ``inspect`` reports it."""

    index: int
    media_type: str
    digest: str
    size: int
    encrypted: bool
    recipients: tuple[RecipientInfo, ...]

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (stable snake_case fields)."""
        return {
            "index": self.index,
            "media_type": self.media_type,
            "digest": self.digest,
            "size": self.size,
            "encrypted": self.encrypted,
            "recipients": [r.as_dict() for r in self.recipients],
        }


@dataclass(frozen=True, slots=True)
class CryptSummary:
    """What encrypt or decrypt did: the new manifest and which layers changed."""

    manifest_digest: str
    changed: tuple[int, ...]
    layers: tuple[LayerInfo, ...]

    def as_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "manifest_digest": self.manifest_digest,
            "changed_layers": list(self.changed),
            "layers": [layer.as_dict() for layer in self.layers],
        }


def _is_encrypted(layer: dict[str, Any]) -> bool:
    return str(layer["mediaType"]).endswith(_SUFFIX)


def select_layers(requested: Sequence[int], count: int) -> list[int]:
    """``--encrypt-layer`` indexes (negative from the end) as sorted positive ones; all if none."""
    if not requested:
        return list(range(count))
    chosen = set()
    for value in requested:
        index = value + count if value < 0 else value
        if not 0 <= index < count:
            raise InvalidInput("--encrypt-layer", f"{value} is out of range for {count} layers")
        chosen.add(index)
    return sorted(chosen)


def _wrapped_blobs(annotation: str, where: str) -> list[bytes]:
    out = []
    for part in annotation.split(","):
        try:
            out.append(base64.b64decode(part, validate=True))
        except (binascii.Error, ValueError):
            raise InvalidInput(where, "a wrapped-key annotation is not base64") from None
    return out


def _recipients(layer: dict[str, Any], where: str) -> tuple[RecipientInfo, ...]:
    annotations = layer.get("annotations", {})
    out: list[RecipientInfo] = []
    if _keys.JWE_ANNOTATION in annotations:
        for blob in _wrapped_blobs(annotations[_keys.JWE_ANNOTATION], where):
            out.extend(_keys.describe_jwe(blob, where))
    if _keys.PKCS7_ANNOTATION in annotations:
        for blob in _wrapped_blobs(annotations[_keys.PKCS7_ANNOTATION], where):
            out.extend(_keys.describe_pkcs7(blob, where))
    return tuple(out)


def _info(index: int, layer: dict[str, Any], where: str) -> LayerInfo:
    encrypted = _is_encrypted(layer)
    return LayerInfo(
        index=index,
        media_type=layer["mediaType"],
        digest=layer["digest"],
        size=layer["size"],
        encrypted=encrypted,
        recipients=_recipients(layer, where) if encrypted else (),
    )


def inspect_image(
    ref: ImageRef, platform: Platform | None = None
) -> tuple[ResolvedImage, list[LayerInfo]]:
    """The image's manifest and, per layer, whether it is encrypted and for whom."""
    layout = Layout(ref.path)
    image = layout.resolve(ref.tag, platform)
    return image, [
        _info(n, layer, f"layer {n} ({layer['digest']})") for n, layer in enumerate(image.layers)
    ]


def _write_manifest(
    writer: LayoutWriter, layout: Layout, image: ResolvedImage, layers: list[dict[str, Any]]
) -> dict[str, Any]:
    writer.copy_blob(layout, image.config, "config")
    manifest = dict(image.manifest)
    manifest["layers"] = layers
    media_type = manifest.get("mediaType") or image.descriptor["mediaType"]
    return writer.put_json(manifest, media_type)


def encrypt_image(
    src: ImageRef,
    dst: ImageRef,
    recipients: Sequence[Recipient],
    *,
    layers: Sequence[int] = (),
    platform: Platform | None = None,
    progress: Progress | None = None,
) -> CryptSummary:
    """Encrypt the chosen layers of ``src`` for ``recipients`` into a new layout ``dst``."""
    if not recipients:
        raise InvalidInput("--encryption-key", "at least one recipient is needed")
    layout = Layout(src.path)
    image = layout.resolve(src.tag, platform)
    chosen = select_layers(layers, len(image.layers))
    jwe = [r for r in recipients if r.scheme == "jwe"]
    pkcs7 = [r for r in recipients if r.scheme == "pkcs7"]
    out_layers: list[dict[str, Any]] = []
    changed = []
    with LayoutWriter(dst.path) as writer:
        for n, layer in enumerate(image.layers):
            where = f"layer {n} ({layer['digest']})"
            if n not in chosen or _is_encrypted(layer):
                if n in chosen and layers:
                    raise InvalidInput(f"--encrypt-layer {n}", "that layer is already encrypted")
                writer.copy_blob(layout, layer, where)
                out_layers.append(layer)
                continue
            if progress:
                progress(f"encrypting {where}")
            handle, tmp = writer.temp_blob()
            with handle, layout.open_blob(layer, where) as source:
                result = encrypt_stream(
                    source, handle, digest=layer["digest"], size=layer["size"], where=where
                )
            writer.adopt_blob(tmp, result.digest)
            private = result.private.to_json()
            annotations = {
                k: v
                for k, v in layer.get("annotations", {}).items()
                if not k.startswith(ENC_PREFIX)
            }
            if jwe:
                wrapped = _keys.wrap_jwe(private, jwe)
                annotations[_keys.JWE_ANNOTATION] = base64.b64encode(wrapped).decode()
            if pkcs7:
                wrapped = _keys.wrap_pkcs7(private, pkcs7)
                annotations[_keys.PKCS7_ANNOTATION] = base64.b64encode(wrapped).decode()
            annotations[PUBOPTS_ANNOTATION] = base64.b64encode(result.public.to_json()).decode()
            out_layers.append(
                {
                    **layer,
                    "mediaType": layer["mediaType"] + _SUFFIX,
                    "digest": result.digest,
                    "size": result.size,
                    "annotations": annotations,
                }
            )
            changed.append(n)
        descriptor = _write_manifest(writer, layout, image, out_layers)
        writer.commit(descriptor, dst.tag or src.tag)
    infos = tuple(_info(n, layer, f"layer {n}") for n, layer in enumerate(out_layers))
    return CryptSummary(descriptor["digest"], tuple(changed), infos)


def _unwrap(layer: dict[str, Any], keys: list[DecryptionKey], where: str) -> PrivateOptions:
    annotations = layer.get("annotations", {})
    found = False
    for name, unwrap in (
        (_keys.JWE_ANNOTATION, _keys.unwrap_jwe),
        (_keys.PKCS7_ANNOTATION, _keys.unwrap_pkcs7),
    ):
        if name not in annotations:
            continue
        found = True
        for blob in _wrapped_blobs(annotations[name], where):
            plain = unwrap(blob, keys, where)
            if plain is not None:
                return PrivateOptions.from_json(plain, where)
    if not found:
        raise InvalidInput(where, "encrypted layer carries no jwe or pkcs7 wrapped key")
    given = ", ".join(k.source for k in keys)
    raise IntegrityError(f"{where}: none of the decryption keys ({given}) is a recipient")


def decrypt_image(
    src: ImageRef,
    dst: ImageRef,
    keys: list[DecryptionKey],
    *,
    platform: Platform | None = None,
    progress: Progress | None = None,
) -> CryptSummary:
    """Decrypt every encrypted layer of ``src`` into a new layout ``dst``, checking each one."""
    layout = Layout(src.path)
    image = layout.resolve(src.tag, platform)
    out_layers: list[dict[str, Any]] = []
    changed = []
    with LayoutWriter(dst.path) as writer:
        for n, layer in enumerate(image.layers):
            where = f"layer {n} ({layer['digest']})"
            if not _is_encrypted(layer):
                writer.copy_blob(layout, layer, where)
                out_layers.append(layer)
                continue
            annotations = layer.get("annotations", {})
            if PUBOPTS_ANNOTATION not in annotations:
                raise InvalidInput(where, f"encrypted layer has no {PUBOPTS_ANNOTATION}")
            try:
                pub_raw = base64.b64decode(annotations[PUBOPTS_ANNOTATION], validate=True)
            except (binascii.Error, ValueError):
                raise InvalidInput(where, f"{PUBOPTS_ANNOTATION} is not base64") from None
            public = PublicOptions.from_json(pub_raw, where)
            private = _unwrap(layer, keys, where)
            if progress:
                progress(f"decrypting {where}")
            handle, tmp = writer.temp_blob()
            with handle, layout.open_blob(layer, where) as source:
                result = decrypt_stream(
                    source,
                    handle,
                    digest=layer["digest"],
                    size=layer["size"],
                    public=public,
                    private=private,
                    where=where,
                )
            writer.adopt_blob(tmp, result.digest)
            plain = {k: v for k, v in annotations.items() if not k.startswith(ENC_PREFIX)}
            new = {
                **layer,
                "mediaType": layer["mediaType"].removesuffix(_SUFFIX),
                "digest": result.digest,
                "size": result.size,
            }
            if plain:
                new["annotations"] = plain
            else:
                new.pop("annotations", None)
            out_layers.append(new)
            changed.append(n)
        descriptor = _write_manifest(writer, layout, image, out_layers)
        writer.commit(descriptor, dst.tag or src.tag)
    infos = tuple(_info(n, layer, f"layer {n}") for n, layer in enumerate(out_layers))
    return CryptSummary(descriptor["digest"], tuple(changed), infos)
