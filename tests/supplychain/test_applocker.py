"""`stockade applocker rules`: complete policy with default rules; merges never duplicate."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import typer
from typer.testing import CliRunner

from stockade.cli import applocker as applocker_cli

app = typer.Typer()
app.add_typer(applocker_cli.app, name="applocker")

WINDOWS_EXPORT = """\ufeff<AppLockerPolicy Version="1">
  <RuleCollection Type="Exe" EnforcementMode="AuditOnly">
    <FilePathRule Id="a61c8b2c-a319-4cd0-9690-d2177cad7b51" Name="Windows folder"
        Description="" UserOrGroupSid="S-1-1-0" Action="Allow">
      <Conditions><FilePathCondition Path="%WINDIR%\\*" /></Conditions>
    </FilePathRule>
    <FilePathRule Id="11111111-2222-3333-4444-555555555555" Name="Tools"
        Description="" UserOrGroupSid="S-1-5-32-545" Action="Allow">
      <Conditions><FilePathCondition Path="D:\\Tools\\*" /></Conditions>
    </FilePathRule>
  </RuleCollection>
  <RuleCollection Type="Appx" EnforcementMode="NotConfigured" />
</AppLockerPolicy>
"""


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["applocker", "rules", *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stderr


def rules_of(path: Path) -> dict[str, list[tuple[str, str, str, str]]]:
    root = ET.parse(path).getroot()  # noqa: S314 - our own output
    assert root.tag == "AppLockerPolicy"
    out: dict[str, list[tuple[str, str, str, str]]] = {}
    for collection in root.findall("RuleCollection"):
        rows = []
        for rule in collection:
            cond = rule.find("Conditions/FilePathCondition")
            path_text = cond.get("Path", "") if cond is not None else "<publisher>"
            rows.append((rule.get("Id", ""), rule.get("UserOrGroupSid", ""), path_text, rule.tag))
        out[collection.get("Type", "")] = rows
    return out


def test_policy_has_defaults_and_requested_rule(tmp_path: Path) -> None:
    out = tmp_path / "rules.xml"
    code, err = run("--sid", "S-1-5-93-2-2", "--path", "C:\\*", "-o", str(out))
    assert code == 0, err
    rules = rules_of(out)
    assert sorted(rules) == ["Exe", "Msi", "Script"]
    for kind in ("Exe", "Script"):
        paths = {(sid, path) for _, sid, path, _ in rules[kind]}
        assert ("S-1-1-0", "%PROGRAMFILES%\\*") in paths
        assert ("S-1-1-0", "%WINDIR%\\*") in paths
        assert ("S-1-5-32-544", "*") in paths
        assert ("S-1-5-93-2-2", "C:\\*") in paths
    msi = {(sid, path, tag) for _, sid, path, tag in rules["Msi"]}
    assert ("S-1-1-0", "<publisher>", "FilePublisherRule") in msi
    assert ("S-1-1-0", "%WINDIR%\\Installer\\*", "FilePathRule") in msi
    assert ("S-1-5-32-544", "*.*", "FilePathRule") in msi
    ids = [rid for rows in rules.values() for rid, *_ in rows]
    assert len(ids) == len(set(ids))
    # Deterministic: the same request writes the same bytes.
    again = tmp_path / "again.xml"
    run("--sid", "S-1-5-93-2-2", "--path", "C:\\*", "-o", str(again))
    assert again.read_bytes() == out.read_bytes()


def test_merge_twice_adds_nothing_twice(tmp_path: Path) -> None:
    existing = tmp_path / "existing.xml"
    existing.write_text(WINDOWS_EXPORT, encoding="utf-8")
    first = tmp_path / "first.xml"
    code, err = run("--merge", str(existing), "-o", str(first))
    assert code == 0, err
    second = tmp_path / "second.xml"
    code, err = run("--merge", str(first), "-o", str(second))
    assert code == 0, err
    assert "merged 0 new rule(s)" in err
    assert rules_of(second) == rules_of(first)
    rules = rules_of(second)
    exe = rules["Exe"]
    assert len(exe) == len(set(exe))
    # The existing rules survive; the Windows-folder default is not added a second time.
    assert sum(1 for _, sid, path, _ in exe if (sid, path) == ("S-1-1-0", "%WINDIR%\\*")) == 1
    assert (
        "11111111-2222-3333-4444-555555555555",
        "S-1-5-32-545",
        "D:\\Tools\\*",
        "FilePathRule",
    ) in exe
    assert "Appx" in rules
    root = ET.parse(second).getroot()  # noqa: S314 - our own output
    modes = {c.get("Type"): c.get("EnforcementMode") for c in root.findall("RuleCollection")}
    assert modes["Exe"] == "AuditOnly"  # an existing mode is kept


def test_bad_input(tmp_path: Path) -> None:
    code, err = run("--sid", "everyone", "-o", str(tmp_path / "x.xml"))
    assert code == 2
    assert "--sid" in err
    evil = tmp_path / "evil.xml"
    evil.write_text('<!DOCTYPE x [<!ENTITY a "b">]><AppLockerPolicy Version="1"/>')
    code, err = run("--merge", str(evil), "-o", str(tmp_path / "x.xml"))
    assert code == 2
    assert "DTDs are not allowed" in err
    code, err = run("--collection", "Appx", "-o", str(tmp_path / "x.xml"))
    assert code == 2
    assert not (tmp_path / "x.xml").exists()
