"""The daemon: everything behind the ``[daemon]`` extra (trio, structlog, the browser stack)."""
