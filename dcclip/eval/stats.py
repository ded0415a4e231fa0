"""95% intervals for the rates evaluation reports: the Wilson score interval, per language and for the language mean.

A top-1 or recall@k figure is a share of ``n`` independent trials (images or captions) that succeeded, so its
sampling uncertainty is a binomial one. The Wilson score interval (Wilson 1927; Newcombe 1998, method 3) keeps its
coverage near the nominal level at small ``n`` and at rates near 0 or 1, where the textbook ``p ± z·se`` interval
collapses to a width of zero. Only ``math`` is used: the runtime install has no scipy.

The mean over languages is the unweighted mean of the per-language rates. Its interval is a Wilson interval at that
mean with ``n`` = the smallest per-language count, not one from the pooled counts: the languages score the same
images, so their outcomes are correlated, and pooling ``L x n`` trials as if independent would draw the interval up to
sqrt(L) times too narrow. For any correlation between languages, the variance of the mean is at most
``p̄(1 - p̄) / n``, so this interval is the conservative one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "CI_SUFFIX",
    "LEVEL",
    "Z95",
    "ci_key",
    "format_rate",
    "mean_interval",
    "rate_interval",
    "successes",
    "wilson_interval",
    "with_intervals",
]

LEVEL = 0.95
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
CI_SUFFIX = "_ci95"
_COUNT_TOLERANCE = 1e-6  # a rate times its n must land this close to a whole number of successes


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of ``k`` successes in ``n`` trials, as (low, high) fractions; exact 0 / 1 at the ends."""
    if isinstance(k, bool) or isinstance(n, bool) or int(k) != k or int(n) != n:
        raise TypeError(f"wilson_interval takes whole numbers of successes and trials, got {k!r} of {n!r}")
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"wilson_interval needs n >= 1 and 0 <= k <= n, got k={k}, n={n}")
    low, high = _wilson(k / n, int(n), z)
    return (0.0 if k == 0 else low), (1.0 if k == n else high)


def _wilson(p: float, n: int, z: float) -> tuple[float, float]:
    """The closed form: (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n), clipped to [0, 1]."""
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z / denominator * math.sqrt(max(0.0, p * (1.0 - p)) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def successes(rate: float, n: int) -> int:
    """The whole number of successes a rate over ``n`` trials stands for; ValueError when it is not one."""
    k = float(rate) * int(n)
    if not 0.0 <= rate <= 1.0 or abs(k - round(k)) > _COUNT_TOLERANCE * max(1, n):
        raise ValueError(f"{rate!r} is not a share of {n} trials")
    return round(k)


def rate_interval(rate: float, n: int) -> tuple[float, float]:
    """Wilson interval of a rate measured over ``n`` trials (the rate must be k/n for a whole k)."""
    return wilson_interval(successes(rate, n), n)


def mean_interval(rates: Sequence[float], ns: Sequence[int], z: float = Z95) -> tuple[float, float]:
    """Interval of the unweighted mean of per-language rates: Wilson at the mean with n = the smallest count.

    Conservative on purpose (see the module docstring): languages share their images, so the pooled counts are not
    independent trials.
    """
    if not rates or len(rates) != len(ns):
        raise ValueError(f"mean_interval needs one count per rate, got {len(rates)} rates and {len(ns)} counts")
    n = int(min(ns))
    if n <= 0:
        raise ValueError(f"mean_interval needs counts >= 1, got {list(ns)}")
    return _wilson(sum(rates) / len(rates), n, z)


def ci_key(metric: str) -> str:
    """Name of a metric's interval in a figures dict: ``top1`` -> ``top1_ci95``."""
    return f"{metric}{CI_SUFFIX}"


def with_intervals(figures: Mapping[str, Any], counts: Mapping[str, str]) -> dict[str, Any]:
    """A copy of one language's figures with ``METRIC_ci95: [low, high]`` right after each metric that has a count.

    ``counts`` maps a metric to the name of the figure holding its number of trials (``{"top1": "n"}``).
    """
    out: dict[str, Any] = {}
    for name, value in figures.items():
        out[name] = value
        if name in counts:
            out[ci_key(name)] = list(rate_interval(float(value), int(figures[counts[name]])))
    return out


def format_rate(value: float, interval: Sequence[float] | None = None, digits: int = 1) -> str:
    """``63.4% [60.2, 66.5]``: a rate in percent with its interval in percentage points (no interval: the rate)."""
    text = f"{value * 100:.{digits}f}%"
    if interval is None:
        return text
    low, high = interval
    return f"{text} [{low * 100:.{digits}f}, {high * 100:.{digits}f}]"
