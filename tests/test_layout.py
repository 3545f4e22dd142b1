"""The import rules written in docs/architecture.md ("Layout"), checked over the tree: a
package may import only the packages its line there names (and the standard library and
third-party packages). The rules are read from the document itself, so the two cannot
drift apart."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.pure

ROOT = Path(__file__).resolve().parent.parent
RULE = re.compile(r"^\| `(\w+)/` \| (.*?) \| (.*?) \|$")


def rules() -> dict[str, set[str]]:
    """package → the packages it may import, from the layout table of the architecture doc."""
    table = {}
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        m = RULE.match(line)
        if m:
            package, may = m.group(1), m.group(3)
            table[package] = set(re.findall(r"`(\w+)`", may)) if "anything" not in may else {"*"}
    return table


def imported(root: Path, package: str, ours: set[str]) -> dict[str, set[str]]:
    """Which of ``ours`` the modules of ``package`` import (at any depth, lazily or not),
    and where."""
    found: dict[str, set[str]] = {}
    for path in sorted((root / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in ours and top != package:
                    found.setdefault(top, set()).add(f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_the_layout_table_names_every_package_on_disk() -> None:
    on_disk = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert set(rules()) == on_disk


def test_no_package_imports_one_its_rule_does_not_name() -> None:
    broken = []
    table = rules()
    for package, allowed in table.items():
        if "*" in allowed:
            continue
        for top, where in imported(ROOT, package, set(table)).items():
            if top not in allowed:
                broken.append(f"{package} imports {top} ({', '.join(sorted(where))})")
    assert not broken, "\n".join(broken)


def test_the_checker_finds_an_import_hidden_in_a_function(tmp_path: Path) -> None:
    (tmp_path / "edge_agent").mkdir()
    (tmp_path / "edge_agent" / "x.py").write_text(
        "import schemas.codec\n\ndef f():\n    from ingest import worker\n"
    )
    found = imported(tmp_path, "edge_agent", {"edge_agent", "ingest", "schemas"})
    assert found == {"schemas": {"edge_agent/x.py:1"}, "ingest": {"edge_agent/x.py:4"}}
