"""The shape of the package: who may import whom, module size, exported names, error codes."""
import ast
import re
from pathlib import Path

from nhrpbridge.errors import ErrorCode

PKG = Path(__file__).resolve().parents[1] / "nhrpbridge"
DOCS = PKG.parent / "docs" / "api.md"
MODULES = sorted(p for p in PKG.rglob("*.py"))


def _imports(path):
    """(module, names) for every `from X import names` in `path`, X resolved to nhrpbridge.*"""
    tree = ast.parse(path.read_text())
    pkg = ".".join(path.relative_to(PKG.parent).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("nhrpbridge"):
                yield mod, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("nhrpbridge"):
                    yield a.name, []


def test_only_the_assembly_point_knows_the_daemon():
    users = {p.name for p in MODULES for mod, _ in _imports(p) if mod == "nhrpbridge.daemon"}
    assert users == {"assemble.py"}


def test_the_database_and_the_codecs_know_no_front_end():
    front = {"nhrpbridge." + m for m in ("api", "viciserver", "eventsocket", "control", "daemon",
                                         "assemble", "cli", "listen", "ingest")}
    for name in ("sa.py", "sadb.py", "wire.py", "bus.py", "policy.py", "protocol/vici.py",
                 "protocol/jsonl.py", "protocol/record.py", "protocol/nhrpevent.py"):
        bad = [m for m, _ in _imports(PKG / name) if m in front]
        assert not bad, f"{name} imports {bad}"


def test_no_module_over_400_lines():
    long = {str(p.relative_to(PKG)): n for p in MODULES
            if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_every_module_declares_all_and_package_imports_use_it():
    exported = {}
    for p in MODULES:
        if p.name in ("__init__.py", "__main__.py"):
            continue
        tree = ast.parse(p.read_text())
        names = [n for n in tree.body if isinstance(n, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets)]
        assert names, f"{p.relative_to(PKG)} has no __all__"
        mod = ".".join(p.relative_to(PKG.parent).with_suffix("").parts)
        exported[mod] = set(ast.literal_eval(names[0].value))
    missing = []
    for p in MODULES:
        for mod, names in _imports(p):
            if mod in exported:
                missing += [f"{p.name}: {mod}.{n}" for n in names if n not in exported[mod]]
    assert missing == []


def test_error_codes_are_exactly_those_docs_api_md_lists():
    table = DOCS.read_text().split("Error codes:", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z-]+)`", table, re.M))
    assert documented == {c.value for c in ErrorCode}
