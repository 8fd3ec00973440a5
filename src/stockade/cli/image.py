"""``stockade image encrypt|decrypt|inspect``: ocicrypt-compatible layer encryption.

Flag names follow skopeo (``--encryption-key``, ``--decryption-key``, ``--encrypt-layer``);
ctr-enc's
``--recipient`` and ``--key`` are accepted as aliases. Exit 2 for bad input (a layout that is not
OCI, a missing tag, a key of the wrong type), 1 for a failed check (HMAC, digest, no matching key).
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from stockade.cli._common import JSON_OPTION, err_console, fail, handle_errors, print_json
from stockade.images import (
    CryptSummary,
    ImageRef,
    Platform,
    decrypt_image,
    encrypt_image,
    inspect_image,
    load_decryption_keys,
    parse_recipient,
)

__all__ = ["app"]

app = typer.Typer(
    help="Encrypt, decrypt and inspect OCI images (ocicrypt's format, skopeo's flags).",
    no_args_is_help=True,
    add_completion=False,
)

PlatformOption = Annotated[
    str | None,
    typer.Option(
        "--platform",
        help="OS/ARCH or OS/ARCH/VARIANT to pick from an image index (default: this host).",
    ),
]


def _progress(message: str) -> None:
    if sys.stderr.isatty():
        err_console.print(message, markup=False)


def _report(summary: CryptSummary, dst: str, verb: str, *, as_json: bool, quiet: bool) -> None:
    if as_json:
        print_json(summary.as_dict())
    elif not quiet:
        err_console.print(
            f"wrote {dst} (manifest {summary.manifest_digest}); {verb} layers"
            f" {', '.join(map(str, summary.changed)) or 'none'}",
            markup=False,
        )


def _platform(value: str | None) -> Platform | None:
    return Platform.parse(value) if value else None


@app.command()
@handle_errors
def encrypt(
    src: Annotated[str, typer.Argument(help="Source image, oci:DIR[:TAG].")],
    dst: Annotated[str, typer.Argument(help="New layout to write, oci:DIR[:TAG].")],
    encryption_key: Annotated[
        list[str] | None,
        typer.Option(
            "--encryption-key",
            "--recipient",
            help="jwe:PUBLIC_KEY.pem or pkcs7:CERTIFICATE.pem; repeat for several recipients.",
        ),
    ] = None,
    encrypt_layer: Annotated[
        list[int] | None,
        typer.Option(
            "--encrypt-layer", help="Layer index to encrypt (negative from the end); default all."
        ),
    ] = None,
    platform: PlatformOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
    as_json: bool = JSON_OPTION,
) -> None:
    """Encrypt layers of an image for one or more recipients."""
    if not encryption_key:
        raise fail("--encryption-key: give at least one recipient (jwe:PUB.pem or pkcs7:CERT.pem)")
    recipients = [parse_recipient(spec) for spec in encryption_key]
    summary = encrypt_image(
        ImageRef.parse(src, "SRC"),
        ImageRef.parse(dst, "DST"),
        recipients,
        layers=encrypt_layer or (),
        platform=_platform(platform),
        progress=None if quiet else _progress,
    )
    _report(summary, dst, "encrypted", as_json=as_json, quiet=quiet)


@app.command()
@handle_errors
def decrypt(
    src: Annotated[str, typer.Argument(help="Encrypted image, oci:DIR[:TAG].")],
    dst: Annotated[str, typer.Argument(help="New layout to write, oci:DIR[:TAG].")],
    decryption_key: Annotated[
        list[str] | None,
        typer.Option(
            "--decryption-key",
            "--key",
            help="Private key PEM (PKCS#1, SEC1 or PKCS#8); for pkcs7 also its certificate."
            " Repeat for several.",
        ),
    ] = None,
    passphrase_env: Annotated[
        str | None,
        typer.Option(
            "--passphrase-env", metavar="VAR", help="Read the private keys' passphrase from $VAR."
        ),
    ] = None,
    platform: PlatformOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
    as_json: bool = JSON_OPTION,
) -> None:
    """Decrypt every encrypted layer, checking the HMAC and the plaintext digest."""
    if not decryption_key:
        raise fail("--decryption-key: give the private key of a recipient")
    for spec in decryption_key:
        if ":" in spec and not os.path.exists(spec):
            raise fail(
                f"--decryption-key {spec.split(':', 1)[0]}: passphrases on the command line are"
                " refused; use --passphrase-env VAR"
            )
    passphrase = None
    if passphrase_env:
        value = os.environ.get(passphrase_env)
        if value is None:
            raise fail(f"--passphrase-env: ${passphrase_env} is not set")
        passphrase = value.encode()
    keys = load_decryption_keys(decryption_key, passphrase)
    summary = decrypt_image(
        ImageRef.parse(src, "SRC"),
        ImageRef.parse(dst, "DST"),
        keys,
        platform=_platform(platform),
        progress=None if quiet else _progress,
    )
    _report(summary, dst, "decrypted", as_json=as_json, quiet=quiet)


@app.command()
@handle_errors
def inspect(
    src: Annotated[str, typer.Argument(help="Image, oci:DIR[:TAG].")],
    platform: PlatformOption = None,
    as_json: bool = JSON_OPTION,
) -> None:
    """List an image's layers, whether each is encrypted, and its recipients."""
    image, layers = inspect_image(ImageRef.parse(src, "SRC"), _platform(platform))
    if as_json:
        print_json(
            {
                "manifest_digest": image.descriptor["digest"],
                "config_digest": image.config["digest"],
                "layers": [layer.as_dict() for layer in layers],
            }
        )
        return
    typer.echo(f"{src} manifest {image.descriptor['digest']} config {image.config['digest']}")
    for layer in layers:
        state = "encrypted" if layer.encrypted else "plain"
        typer.echo(f"layer {layer.index} {layer.digest} {layer.size} {layer.media_type} {state}")
        for r in layer.recipients:
            typer.echo(f"  recipient {r.scheme} {r.algorithm} {r.key_id}".rstrip())
