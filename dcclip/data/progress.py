"""One progress bar for every long loop (shards, translation, index builds, eval): tqdm when asked for and installed
(it comes with the ``train`` extra), else a silent stand-in with the same methods."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

__all__ = ["NullBar", "progress_bar", "progress_iter"]

T = TypeVar("T")


class NullBar:
    """Stands in for tqdm when progress is off or tqdm is not installed."""

    def update(self, n: int = 1) -> None:
        """Nothing to show."""

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to show."""

    def set_postfix_str(self, text: str = "") -> None:
        """Nothing to show."""

    def close(self) -> None:
        """Nothing to close."""

    def __enter__(self) -> NullBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(total: int | None, desc: str, unit: str = "it", enabled: bool = True, **options: Any) -> Any:
    """A tqdm bar counting ``unit`` (its rate is units/s) when enabled and tqdm is installed, else a NullBar."""
    if not enabled:
        return NullBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return NullBar()
    return tqdm(total=total, desc=desc, unit=unit, **options)


def progress_iter(items: Iterable[T], total: int | None, enabled: bool, desc: str, unit: str = "it") -> Iterable[T]:
    """``items`` wrapped in a tqdm bar when enabled and tqdm is installed, else unchanged."""
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return items
    return tqdm(items, total=total, desc=desc, unit=unit)
