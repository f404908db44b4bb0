"""Messages of connected sessions: the durable inbox, sending, retention (docs/messages.md)."""
