"""wactl: the command line of wa-daemon (``wactl --help``, docs/cli.md)."""

from wa_daemon import __version__

__all__ = ["__version__"]
