"""The HTTP API over dcclip.runtime."""
