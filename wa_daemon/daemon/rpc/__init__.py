"""The RPC layer: everything between a client's socket and the session manager.

``listener`` owns the Unix socket (bound under a umask, a lock file against a
second daemon, stale sockets, systemd socket activation); ``protocol`` is the
server half of the wire protocol without I/O (hello, request ids, cancel, the
in-flight cap); ``handlers`` holds one typed function per RPC method;
``faults`` maps every exception to its error frame in one place; ``access``
decides what a caller's peer credentials allow; ``limits`` holds the server's
own limits, rebuilt on every reload; ``server`` is the trio code that moves
bytes between a connection and these parts.
"""
