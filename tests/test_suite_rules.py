"""Rules every test file keeps, checked on the source so that new tests keep them too.

* A missing tool or capability skips a test only through ``helpers.require`` (and its
  ``require_tool``, ``needs_chromium``), which fails it under ``CI=true`` instead: a
  skip elsewhere would let coverage vanish from CI unnoticed.
* A test drawing a random seed does it through ``helpers.draw_seed``, so that a
  failure report starts with the seed and the command that replays it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
RULES = {
    "a skip of its own (use helpers.require / require_tool / needs_chromium)": re.compile(
        r"pytest\.skip\b|\bskipif\b|importorskip|mark\.skip\b|environ(?:\.get)?\(\s*[\"']CI[\"']|environ\[[\"']CI[\"']\]"
    ),
    "a seed of its own (use helpers.draw_seed)": re.compile(
        r"\brandom\.(?:randrange|randint|random|getrandbits|choice|seed)\(|random\.Random\(\)"
    ),
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_every_test_file_keeps_the_rule(rule: str) -> None:
    pattern = RULES[rule]
    offenders = [
        f"{path.name}:{n}: {line.strip()}"
        for path in sorted(TESTS.glob("*.py"))
        if path.name not in ("helpers.py", Path(__file__).name)
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == [], f"{rule}:\n" + "\n".join(offenders)
