"""Reading /proc: one walk and one /proc/PID/stat parser for the Chromium
driver (process groups, orphans) and the resource sampler (PSS, CPU)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


def proc_files(name: str) -> Iterator[tuple[int, bytes]]:
    """(pid, contents of /proc/PID/<name>) for every process we may read."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                yield int(entry.name), (entry / name).read_bytes()
            except OSError:
                continue  # gone meanwhile, or not ours to read


def stat_fields(stat: bytes) -> list[bytes]:
    """The fields of /proc/PID/stat after the command name, which may hold spaces
    and parentheses: [0] is the state (b"Z" for a zombie), [2] the process group,
    [11] and [12] utime and stime in clock ticks."""
    return stat.rsplit(b")", 1)[-1].split()
