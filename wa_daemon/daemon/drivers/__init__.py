"""Browser drivers: the interface in ``base``, one module per implementation."""
