"""The browser layer: one driver interface and the two drivers behind it.

``base`` defines the driver a session talks to and the page events it
yields; ``chromium`` starts, speaks CDP to and reaps a real Chromium;
``adapter`` and ``contract`` read WhatsApp Web's own ``WAWeb*`` modules
inside the page; ``pinning`` serves a cached WhatsApp Web version; ``scripted``
is the in-memory driver for fast tests; ``probe`` checks a page against the
contract; ``procfs`` reads a process tree's resource use from /proc.
"""
