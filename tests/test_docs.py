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
