from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import short_tmpdir


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    with short_tmpdir() as path:
        yield path
