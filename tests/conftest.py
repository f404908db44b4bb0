from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import require_chromium, short_tmpdir


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    with short_tmpdir() as path:
        yield path


@pytest.fixture
def chromium() -> None:
    """Tests marked ``needs_chromium`` (helpers) run Debian's Chromium: required under CI."""
    require_chromium()
