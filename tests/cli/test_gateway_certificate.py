"""A split gateway's certificate names its gateway id (URI SAN ``spiffe://stockade/gateway/<id>``),
which identity holds every heartbeat, sweep and session of that gateway to.

From the dev CA the id is ``gateway.gateway_id`` or the data dir's own; a certificate that names
another id (the setting changed, the data dir moved) is minted again, never kept. From files
(cert-manager) the certificate must name exactly one id, and one that agrees with the setting.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from stockade.cli._runtime import _certified_gateway_id, service_tls
from stockade.core import ConfigError, InvalidInput, write_private
from stockade.core.settings import Settings
from stockade.gateway import default_gateway_id
from stockade.tls import CertificateFiles, DevCA, gateway_ids, gateway_uri


def _serial(files: CertificateFiles) -> int:
    return x509.load_pem_x509_certificate(files.paths[0].read_bytes()).serial_number


def test_the_dev_ca_mints_the_gateway_id_into_the_certificate(tmp_path: Path) -> None:
    DevCA(tmp_path / "ca").ensure()
    settings = Settings(data_dir=tmp_path / "gw", tls={"directory": tmp_path / "ca"})
    own = default_gateway_id(settings.data_dir)
    files = service_tls(settings, "gateway", uris=[gateway_uri(own)])
    first = _serial(files)
    assert gateway_ids(files.paths[0].read_bytes()) == [own]
    assert _certified_gateway_id(files, None) == own
    again = service_tls(settings, "gateway", uris=[gateway_uri(own)])
    assert _serial(again) == first  # fresh and right: kept

    # gateway.gateway_id set (or the data dir moved): the old id must not stay certified
    renamed = service_tls(settings, "gateway", uris=[gateway_uri("gw-east-1")])
    assert gateway_ids(renamed.paths[0].read_bytes()) == ["gw-east-1"]
    assert _serial(renamed) != first
    with pytest.raises(ConfigError, match=r"gateway\.gateway_id: 'gw-a', but the certificate"):
        _certified_gateway_id(renamed, "gw-a")


def test_a_certificate_minted_before_gateway_ids_is_minted_again(tmp_path: Path) -> None:
    """An upgrade: the gateway's leaf from before names no id; keeping it would have identity
    refuse every heartbeat."""
    DevCA(tmp_path / "ca").ensure()
    settings = Settings(data_dir=tmp_path / "gw", tls={"directory": tmp_path / "ca"})
    old = service_tls(settings, "gateway")
    assert gateway_ids(old.paths[0].read_bytes()) == []
    new = service_tls(settings, "gateway", uris=[gateway_uri("gw-a")])
    assert gateway_ids(new.paths[0].read_bytes()) == ["gw-a"]


def _files(tmp_path: Path, *ids: str) -> CertificateFiles:
    ca = DevCA(tmp_path / "issuer")
    cert, key = ca.mint("gateway", sans=["localhost", *map(gateway_uri, ids)])
    directory = tmp_path / "secret"
    write_private(directory / "tls.key", key)
    write_private(directory / "tls.crt", cert, mode=0o644)
    write_private(directory / "ca.crt", ca.ca_cert_path.read_bytes(), mode=0o644)
    return CertificateFiles(directory / "tls.crt", directory / "tls.key", directory / "ca.crt")


def test_a_certificate_from_files_names_the_gateway(tmp_path: Path) -> None:
    files = _files(tmp_path, "stockade-gateway")
    assert _certified_gateway_id(files, None) == "stockade-gateway"
    assert _certified_gateway_id(files, "stockade-gateway") == "stockade-gateway"


@pytest.mark.parametrize(
    ("ids", "configured", "needle"),
    [
        ((), None, "names 0 gateway ids"),
        (("gw-a", "gw-b"), None, "names 2 gateway ids"),
        (("gw-a", "gw-b"), "gw-a", "names 2 gateway ids"),
        (("gw-a",), "gw-b", r"gateway\.gateway_id: 'gw-b', but the certificate"),
    ],
)
def test_a_gateway_certificate_from_files_that_does_not_fit_is_refused(
    tmp_path: Path, ids: tuple[str, ...], configured: str | None, needle: str
) -> None:
    """Refused at start, one line naming the setting: identity would refuse every call."""
    with pytest.raises(ConfigError, match=needle) as info:
        _certified_gateway_id(_files(tmp_path, *ids), configured)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("bad", ["", "a/b", "a b", "a?b", "a#b", "a%2Fb"])
def test_a_gateway_id_that_cannot_be_a_uri_path_segment_is_refused(bad: str) -> None:
    with pytest.raises(InvalidInput, match="cannot be named in a certificate"):
        gateway_uri(bad)
