"""Generated parts of the docs stay identical to what the code generates."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from wa_daemon.daemon.sessions.states import TRANSITIONS, render_markdown
from wa_daemon.protocol import State

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _between(text: str, begin: str, end: str) -> str:
    match = re.search(re.escape(begin) + r"[^\n]*\n(.*?)" + re.escape(end), text, re.S)
    assert match, f"markers {begin!r} missing"
    return match.group(1)


def test_state_table_doc_matches_code() -> None:
    text = (DOCS / "states.md").read_text()
    assert _between(text, "<!-- BEGIN TRANSITIONS", "<!-- END TRANSITIONS -->") == render_markdown()


def test_state_table_has_no_self_loops_and_covers_every_state() -> None:
    assert set(TRANSITIONS) == set(State)
    for src, edges in TRANSITIONS.items():
        assert src not in edges, f"{src} -> {src} must be an event, not a transition"
        assert edges, f"{src} is a dead end"


def test_protocol_hex_examples_match_code() -> None:
    out = subprocess.run(
        [sys.executable, str(DOCS / "gen_protocol_examples.py")], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    text = (DOCS / "protocol.md").read_text()
    assert _between(text, "<!-- BEGIN EXAMPLES", "<!-- END EXAMPLES -->").strip() == out.strip()


def test_configuration_doc_lists_every_key() -> None:
    import msgspec

    from wa_daemon.daemon.ops.config import Config, ScriptedConfig

    text = (DOCS / "configuration.md").read_text()
    keys = [f.name for f in msgspec.structs.fields(Config)]
    keys += [f"scripted.{f.name}" for f in msgspec.structs.fields(ScriptedConfig)]
    missing = [k for k in keys if f"| `{k}` |" not in text]
    assert missing == []


# ---------------------------------------------------------------------------- architecture.md

ROOT = DOCS.parent
ARCHITECTURE = DOCS / "architecture.md"
# Names in backticks that look like ours but are not (a user-agent token, the stdlib's class).
_FOREIGN = {"HeadlessChrome", "Popen"}


def _python_files() -> set[str]:
    files = [*(ROOT / "wa_daemon").rglob("*.py"), *(ROOT / "cli" / "wactl").rglob("*.py")]
    return {p.relative_to(ROOT).as_posix() for p in files}


def _section(text: str, heading: str) -> str:
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"architecture.md has no section {heading!r}"
    return match.group(1)


def test_architecture_module_map_lists_every_module_and_only_real_ones() -> None:
    table = _section(ARCHITECTURE.read_text(), "Module map")
    listed = re.findall(r"^\| `([^`]+\.py)` \|", table, re.M)
    assert len(listed) == len(set(listed)), "a module is listed twice"
    actual = _python_files()
    assert sorted(actual - set(listed)) == [], "modules missing from the module map"
    assert sorted(set(listed) - actual) == [], "the module map lists files that do not exist"


def _targets(node: object) -> list[str]:
    """The names a statement of a module or class body binds."""
    import ast

    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return [(a.asname or a.name).split(".")[0] for a in node.names]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    if isinstance(node, ast.Assign):
        return [n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)]
    if isinstance(node, (ast.If, ast.Try)):  # TYPE_CHECKING, version checks
        return [name for child in ast.iter_child_nodes(node) for name in _targets(child)]
    return []


def _class_members(cls: object) -> set[str]:
    """A class's own members: what its body binds, and ``self.x`` set in its methods."""
    import ast

    assert isinstance(cls, ast.ClassDef)
    members = {name for stmt in cls.body for name in _targets(stmt)}
    for method in cls.body:
        if isinstance(method, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(method):
                if (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.ctx, ast.Store)
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "self"
                ):
                    members.add(node.attr)
    return members


def _project_names() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module or package short name -> the names it binds, its classes' members included;
    class name -> its members), unioned over files that share a name."""
    import ast

    modules: dict[str, set[str]] = {}
    classes: dict[str, set[str]] = {}
    for rel in sorted(_python_files()):
        path = ROOT / rel
        tree = ast.parse(path.read_text())
        parts = path.with_suffix("").parts
        short = parts[-2] if parts[-1] == "__init__" else parts[-1]
        names = modules.setdefault(short, set())
        if parts[-1] == "__init__":  # a package: its modules are its names too
            names.update(p.stem for p in path.parent.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists())
        names.update(name for stmt in tree.body for name in _targets(stmt))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                members = _class_members(node)
                classes.setdefault(node.name, set()).update(members)
                names.update(members)
    return modules, classes


def test_architecture_names_exist_in_the_code() -> None:
    """Every file path, ``Class.member``, ``module.name`` and class-like name the page
    shows in backticks exists, so a reader can follow it by name."""
    modules, classes = _project_names()
    defined = set().union(*modules.values())
    text = ARCHITECTURE.read_text()
    missing: list[str] = []
    fences = re.findall(r"^```.*?^```", text, re.S | re.M)
    basenames = {Path(f).name for f in _python_files()}
    for fence in fences:  # the diagrams: every file they name exists somewhere
        missing += [f for f in re.findall(r"[\w/]+\.py\b", fence) if Path(f).name not in basenames]
    for raw in re.findall(r"`([^`]+)`", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)):
        token = " ".join(raw.split())
        if token.endswith(".py"):
            if not ((ROOT / token).exists() or (ROOT / "wa_daemon" / "daemon" / token).exists()):
                missing.append(token)
            continue
        dotted = re.match(r"^(_?[A-Za-z]\w*(?:\.\w+)+)(?:\(.*\))?$", token)
        if dotted:
            *_, head, tail = dotted.group(1).split(".")
            if head in classes:
                if tail not in classes[head]:
                    missing.append(token)
            elif head in modules:
                if tail not in modules[head]:
                    missing.append(token)
            continue
        if re.fullmatch(r"_?[A-Z][A-Za-z0-9]*[a-z][A-Za-z0-9]*", token) and token not in _FOREIGN:
            if token not in defined:
                missing.append(token)
    assert missing == [], f"architecture.md names what the code does not have: {missing}"
