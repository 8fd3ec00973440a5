"""Every ``stockade`` command imports the whole CLI: heavy validators load only when used."""

from __future__ import annotations

import subprocess
import sys


def test_cli_import_does_not_load_the_schema_validators() -> None:
    code = (
        "import sys, stockade.cli\n"
        "heavy = ('jsonschema', 'kubernetes_validate', 'rfc3987_syntax', 'lark')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert out.strip() == "[]"
