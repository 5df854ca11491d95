"""Codecs and the SA database do no I/O (STYLE.md): checked on the source."""
import ast
import subprocess
import sys

import pytest
from conftest import ROOT

PURE = sorted((ROOT / "nhrpbridge" / "protocol").glob("*.py")) + [ROOT / "nhrpbridge" / "sadb.py"]
FORBIDDEN = {"asyncio", "socket", "os", "subprocess", "logging", "time", "select", "threading"}


@pytest.mark.parametrize("path", PURE, ids=lambda p: p.name)
def test_pure_modules_import_no_io(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        for name in names:
            assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


def test_package_import_pulls_no_third_party_module():
    code = ("import sys, nhrpbridge, nhrpbridge.protocol.record, nhrpbridge.sadb, "
            "nhrpbridge.updown, nhrpbridge.client;"
            "bad=[m for m in ('yaml','jinja2','cryptography','watchdog') if m in sys.modules];"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stderr
