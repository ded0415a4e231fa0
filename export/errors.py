"""The one exception export raises for anything that makes a bundle unusable (failed export, parity, quantisation)."""

from __future__ import annotations

from typing import Any


class ExportError(RuntimeError):
    """Export failed or produced a graph that does not match the torch model; the message carries the figures."""

    def __init__(self, message: str, report: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.report = report
