"""AppLocker policies that never lock the host out.

A policy Stockade writes always carries the Windows default allow rules of each collection it
touches (Everyone may run from ``%PROGRAMFILES%`` and ``%WINDIR%``, Administrators may run
anything; for Windows Installer files: signed installers, ``%WINDIR%\\Installer`` and
Administrators), with the GUIDs Windows itself gives them, plus the requested path rules. Rule ids
of requested rules are UUIDv5 of their content, so the same request always yields the same id.

Merging adds a rule only when no rule with the same id *or* the same meaning (collection, action,
SID, conditions) exists: merging twice, or merging into a policy exported from Windows, adds
nothing twice.
"""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.x509.oid import NameOID

from stockade.core import InvalidInput

__all__ = [
    "COLLECTIONS",
    "PathRule",
    "build_policy",
    "default_rules",
    "load_signer_certificate",
    "merge_policy",
    "parse_collections",
    "parse_policy",
    "path_rule",
    "policy_xml",
    "publisher_name",
    "publisher_rule",
]

Collection = Literal["Exe", "Msi", "Script"]
COLLECTIONS: tuple[Collection, ...] = ("Exe", "Msi", "Script")
EVERYONE = "S-1-1-0"
ADMINISTRATORS = "S-1-5-32-544"
_NAMESPACE = uuid.UUID("0b7c1d2e-5a43-4b8e-9f61-3c2d7e8a9b10")
_SID = re.compile(r"^S-1(-\d+){1,15}$")


@dataclass(frozen=True)
class PathRule:
    """A FilePathRule (or, with ``publisher``, the default signed-installer FilePublisherRule)."""

    collection: Collection
    id: str
    name: str
    description: str
    sid: str
    path: str
    action: Literal["Allow", "Deny"] = "Allow"
    publisher: bool = False
    publisher_name: str = "*"
    """The signer a publisher rule allows (``*``: any signer, as Windows' default MSI rule)."""

    def element(self) -> ET.Element:
        """The rule as an AppLocker XML element."""
        tag = "FilePublisherRule" if self.publisher else "FilePathRule"
        rule = ET.Element(
            tag,
            {
                "Id": self.id,
                "Name": self.name,
                "Description": self.description,
                "UserOrGroupSid": self.sid,
                "Action": self.action,
            },
        )
        conditions = ET.SubElement(rule, "Conditions")
        if self.publisher:
            condition = ET.SubElement(
                conditions,
                "FilePublisherCondition",
                {"PublisherName": self.publisher_name, "ProductName": "*", "BinaryName": "*"},
            )
            ET.SubElement(
                condition,
                "BinaryVersionRange",
                {"LowSection": "0.0.0.0", "HighSection": "*"},  # noqa: S104 - a version
            )
        else:
            ET.SubElement(conditions, "FilePathCondition", {"Path": self.path})
        return rule


def _d(collection: Collection, rid: str, name: str, desc: str, sid: str, path: str) -> PathRule:
    return PathRule(collection, rid, f"(Default Rule) {name}", desc, sid, path)


_PF = "Allows members of the Everyone group to run {} that are located in the Program Files folder."
_WIN = "Allows members of the Everyone group to run {} that are located in the Windows folder."
_ADM = "Allows members of the local Administrators group to run all {}."

#: Windows' own default rules, with the GUIDs the AppLocker snap-in gives them.
_DEFAULTS: dict[Collection, tuple[PathRule, ...]] = {
    "Exe": (
        _d(
            "Exe",
            "921cc481-6e17-4653-8f75-050b80acca20",
            "All files located in the Program Files folder",
            _PF.format("applications"),
            EVERYONE,
            "%PROGRAMFILES%\\*",
        ),
        _d(
            "Exe",
            "a61c8b2c-a319-4cd0-9690-d2177cad7b51",
            "All files located in the Windows folder",
            _WIN.format("applications"),
            EVERYONE,
            "%WINDIR%\\*",
        ),
        _d(
            "Exe",
            "fd686d83-a829-4351-8ff4-27c7de5755d2",
            "All files",
            _ADM.format("applications"),
            ADMINISTRATORS,
            "*",
        ),
    ),
    "Msi": (
        PathRule(
            "Msi",
            "b7af7102-efde-4369-8a89-7a6a392d1473",
            "(Default Rule) All digitally signed Windows Installer files",
            "Allows members of the Everyone group to run digitally signed Windows Installer files.",
            EVERYONE,
            "",
            publisher=True,
        ),
        _d(
            "Msi",
            "5b290184-345a-4453-b184-45305f6d9a54",
            "All Windows Installer files in %systemdrive%\\Windows\\Installer",
            "Allows members of the Everyone group to run all Windows Installer files located"
            " in %systemdrive%\\Windows\\Installer.",
            EVERYONE,
            "%WINDIR%\\Installer\\*",
        ),
        _d(
            "Msi",
            "64ad46ff-0d71-4fa0-a30b-3f3d30c5433d",
            "All Windows Installer files",
            _ADM.format("Windows Installer files"),
            ADMINISTRATORS,
            "*.*",
        ),
    ),
    "Script": (
        _d(
            "Script",
            "06dce67b-934c-454f-a263-2515c8796a5d",
            "All scripts located in the Program Files folder",
            _PF.format("scripts"),
            EVERYONE,
            "%PROGRAMFILES%\\*",
        ),
        _d(
            "Script",
            "9428c672-5fc3-47f4-808a-a0011f36dd2c",
            "All scripts located in the Windows folder",
            _WIN.format("scripts"),
            EVERYONE,
            "%WINDIR%\\*",
        ),
        _d(
            "Script",
            "ed97d0cb-15ff-430f-b82c-8d7832957725",
            "All scripts",
            _ADM.format("scripts"),
            ADMINISTRATORS,
            "*",
        ),
    ),
}


def parse_collections(names: Iterable[str] | None) -> list[Collection]:
    """Collections named on the command line (all of them when none), in policy order."""
    wanted = list(names or COLLECTIONS)
    for name in wanted:
        if name not in COLLECTIONS:
            raise InvalidInput("--collection", f"{name!r} is not one of {', '.join(COLLECTIONS)}")
    return [c for c in COLLECTIONS if c in wanted]


def default_rules(collection: Collection) -> tuple[PathRule, ...]:
    """Windows' default allow rules for ``collection``."""
    return _DEFAULTS[collection]


def path_rule(collection: Collection, sid: str, path: str, action: str = "Allow") -> PathRule:
    """A requested path rule with a deterministic (UUIDv5) id."""
    if not _SID.match(sid):
        raise InvalidInput("--sid", f"{sid!r} is not a SID like S-1-5-93-2-2")
    if not path or any(c in path for c in '<>"|') or len(path) > 1024:
        raise InvalidInput("--path", f"{path!r} is not a Windows path pattern like C:\\*")
    if action not in ("Allow", "Deny"):
        raise InvalidInput("--action", "must be Allow or Deny")
    rid = str(uuid.uuid5(_NAMESPACE, f"{collection}|{action}|{sid.upper()}|{path.lower()}"))
    return PathRule(
        collection,
        rid,
        f"Stockade: {path} for {sid}",
        f"{action}s {sid} to run {collection} files in {path} (written by stockade).",
        sid,
        path,
        "Allow" if action == "Allow" else "Deny",
    )


#: Subject attributes of the signing certificate that name the publisher, in AppLocker's order
#: (``O=CONTOSO LTD, L=REDMOND, S=WASHINGTON, C=US``: what Get-AppLockerFileInformation shows).
_PUBLISHER_PARTS = (
    ("O", NameOID.ORGANIZATION_NAME),
    ("L", NameOID.LOCALITY_NAME),
    ("S", NameOID.STATE_OR_PROVINCE_NAME),
    ("C", NameOID.COUNTRY_NAME),
)


def _quoted(value: str) -> str:
    value = value.strip().upper()
    if any(c in value for c in ',="+<>#;'):
        return '"' + value.replace('"', '""') + '"'
    return value


def publisher_name(certificate: x509.Certificate) -> str:
    """The AppLocker publisher of files signed with ``certificate`` (its subject's O, L, S and
    C, upper case; the CN when the subject has no O)."""
    subject = certificate.subject
    parts: list[str] = []
    for label, oid in _PUBLISHER_PARTS:
        for attribute in subject.get_attributes_for_oid(oid):
            parts.append(f"{label}={_quoted(str(attribute.value))}")
    if not subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME):
        common = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not common:
            raise InvalidInput("--publisher-from", "the certificate's subject has no O or CN")
        parts.insert(0, f"CN={_quoted(str(common[0].value))}")
    return ", ".join(parts)


def load_signer_certificate(path: Path) -> x509.Certificate:
    """The signing certificate in ``path`` (PEM or DER; the first one of a PEM bundle)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(str(path), f"cannot read the certificate ({exc.strerror})") from None
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)[0]
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise InvalidInput(
            str(path), "not a PEM or DER X.509 certificate; export the signer's certificate"
        ) from None


def publisher_rule(collection: Collection, sid: str, certificate: x509.Certificate) -> PathRule:
    """A FilePublisherRule letting ``sid`` run ``collection`` files signed with ``certificate``
    (any product, file name and version), with a deterministic (UUIDv5) id."""
    if not _SID.match(sid):
        raise InvalidInput("--sid", f"{sid!r} is not a SID like S-1-5-93-2-2")
    name = publisher_name(certificate)
    rid = str(uuid.uuid5(_NAMESPACE, f"{collection}|Allow|{sid.upper()}|publisher|{name}"))
    return PathRule(
        collection,
        rid,
        f"Stockade: files signed by {name} for {sid}",
        f"Allows {sid} to run {collection} files signed by {name} (written by stockade).",
        sid,
        "",
        publisher=True,
        publisher_name=name,
    )


def build_policy(
    collections: Iterable[Collection],
    rules: Iterable[PathRule],
    *,
    mode: str = "Enabled",
) -> ET.Element:
    """A complete ``AppLockerPolicy`` element: defaults plus ``rules`` for each collection."""
    if mode not in ("Enabled", "AuditOnly", "NotConfigured"):
        raise InvalidInput("--mode", "must be Enabled, AuditOnly or NotConfigured")
    wanted = [c for c in COLLECTIONS if c in set(collections)]
    by_collection: dict[str, list[PathRule]] = {c: list(_DEFAULTS[c]) for c in wanted}
    for rule in rules:
        by_collection.setdefault(rule.collection, list(_DEFAULTS[rule.collection])).append(rule)
    policy = ET.Element("AppLockerPolicy", {"Version": "1"})
    for collection in COLLECTIONS:
        if collection not in by_collection:
            continue
        element = ET.SubElement(
            policy, "RuleCollection", {"Type": collection, "EnforcementMode": mode}
        )
        for rule in by_collection[collection]:
            element.append(rule.element())
    return policy


def parse_policy(text: str, *, source: str) -> ET.Element:
    """Parse an AppLocker policy; DTDs and entities are refused before parsing."""
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise InvalidInput(source, "DTDs are not allowed in an AppLocker policy")
    try:
        root = ET.fromstring(text.lstrip("\ufeff"))  # noqa: S314 - no DTD, checked above
    except ET.ParseError as exc:
        raise InvalidInput(source, f"not well-formed XML ({exc})") from exc
    if root.tag != "AppLockerPolicy":
        raise InvalidInput(source, f"root element is {root.tag}, expected AppLockerPolicy")
    return root


def _meaning(rule: ET.Element) -> tuple[str, ...]:
    conditions = rule.find("Conditions")
    described = tuple(
        sorted(
            ET.tostring(child, encoding="unicode").strip().lower()
            for child in (conditions if conditions is not None else [])
        )
    )
    return (
        rule.tag,
        rule.get("Action", ""),
        rule.get("UserOrGroupSid", "").upper(),
        *described,
    )


def merge_policy(existing: ET.Element, addition: ET.Element) -> int:
    """Merge ``addition`` into ``existing`` in place; return how many rules were added."""
    added = 0
    for collection in addition.findall("RuleCollection"):
        kind = collection.get("Type", "")
        target = next(
            (c for c in existing.findall("RuleCollection") if c.get("Type") == kind), None
        )
        if target is None:
            target = ET.SubElement(existing, "RuleCollection", dict(collection.attrib))
        elif target.get("EnforcementMode", "NotConfigured") == "NotConfigured":
            target.set("EnforcementMode", collection.get("EnforcementMode", "NotConfigured"))
        ids = {r.get("Id", "").lower() for r in target}
        meanings = {_meaning(r) for r in target}
        for rule in collection:
            if rule.get("Id", "").lower() in ids or _meaning(rule) in meanings:
                continue
            target.append(rule)
            ids.add(rule.get("Id", "").lower())
            meanings.add(_meaning(rule))
            added += 1
    return added


def policy_xml(policy: ET.Element) -> str:
    """The policy as indented UTF-8 XML text."""
    ET.indent(policy, space="  ")
    return ET.tostring(policy, encoding="unicode", xml_declaration=False) + "\n"
