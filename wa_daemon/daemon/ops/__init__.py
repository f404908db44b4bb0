"""The operations layer: what an operator configures and observes.

``config`` is the typed settings and their defaults; ``configfile`` reads,
checks and reloads the TOML file; ``log`` sets up structlog's JSON lines;
``metrics`` and ``metrics_http`` are the Prometheus families and their
endpoint; ``systemd`` speaks sd_notify, the watchdog and socket activation.
Nothing here knows about sessions' insides; the layers above hand it numbers.
"""
