from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from .helpers import CHROMIUM, REPLAY, require_chromium, short_tmpdir

# Every process a test starts (daemon, wactl, simulator) runs the working tree's
# code, as the test process does (pytest's `pythonpath`): the venv holds a regular
# install (.ci/setup), which is older than the tree whenever the code was edited since.
_TREE = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent.parent / "cli")]
os.environ["PYTHONPATH"] = os.pathsep.join(
    _TREE + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in _TREE]
)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    with short_tmpdir() as path:
        yield path


@pytest.fixture
def chromium() -> str:
    """Tests marked ``needs_chromium`` (helpers) run Debian's Chromium: required under CI.
    Its path, for the tests that start it themselves."""
    require_chromium()
    return CHROMIUM


class _ReplayFirst:
    """A failure report that starts with the seed and the command that replays it."""

    def __init__(self, line: str, inner: Any) -> None:
        self.line = line
        self.inner = inner

    def toterminal(self, tw: Any) -> None:
        tw.line(self.line, red=True, bold=True)
        if hasattr(self.inner, "toterminal"):
            self.inner.toterminal(tw)
        else:
            tw.line(str(self.inner))

    def __getattr__(self, name: str) -> Any:  # reprcrash and friends, for the short summary
        return getattr(self.inner, name)

    def __str__(self) -> str:
        return f"{self.line}\n{self.inner}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    replay = item.stash.get(REPLAY, None)
    if replay is not None and report.failed:
        report.longrepr = _ReplayFirst(f"RANDOM SEED: {replay}", report.longrepr)
