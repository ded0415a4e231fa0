"""Wilson score intervals: published values, the closed form's defining equation, edge cases, the mean's interval."""

from __future__ import annotations

import math

import pytest

from dcclip.eval.stats import (
    Z95,
    ci_key,
    format_rate,
    mean_interval,
    rate_interval,
    successes,
    wilson_interval,
    with_intervals,
)

# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I, method 3 (Wilson score,
# no continuity correction), 4 decimals; plus statsmodels' proportion_confint(k, n, method="wilson") values.
PUBLISHED = [
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0000, 0.1611),
    (1, 29, 0.0061, 0.1718),
    (29, 29, 0.8830, 1.0000),
    (0, 10, 0.0000, 0.2775),
    (10, 10, 0.7225, 1.0000),
    (50, 100, 0.4038, 0.5962),
    (81, 90, 0.8208, 0.9465),
]


@pytest.mark.parametrize(("k", "n", "low", "high"), PUBLISHED)
def test_wilson_matches_published_values(k, n, low, high):
    assert wilson_interval(k, n) == pytest.approx((low, high), abs=5e-5)


@pytest.mark.parametrize(("k", "n"), [(1, 10), (7, 10), (50, 100), (81, 90), (3, 1000), (999, 1000)])
def test_wilson_bounds_solve_the_score_equation(k, n):
    """Wilson's bounds are the p where the score test is exactly at z: |k/n - p| = z * sqrt(p (1 - p) / n)."""
    for p in wilson_interval(k, n):
        assert abs(k / n - p) == pytest.approx(Z95 * math.sqrt(p * (1 - p) / n), rel=1e-9)


def test_wilson_ends_and_symmetry():
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0  # exact, not 0.9999999999999999
    low, high = wilson_interval(3, 17)
    mirrored = wilson_interval(14, 17)
    assert (low, high) == pytest.approx((1 - mirrored[1], 1 - mirrored[0]), abs=1e-12)
    assert low < 3 / 17 < high
    narrower = wilson_interval(300, 1700)
    assert narrower[1] - narrower[0] < high - low  # more trials, tighter interval


@pytest.mark.parametrize(("k", "n", "error"), [(-1, 10, ValueError), (11, 10, ValueError), (0, 0, ValueError),
                                                (1.5, 10, TypeError), (True, 10, TypeError)])  # fmt: skip
def test_wilson_rejects_impossible_counts(k, n, error):
    with pytest.raises(error):
        wilson_interval(k, n)


def test_rates_map_back_to_whole_counts():
    assert successes(0.7, 10) == 7 and successes(81 / 90, 90) == 81
    assert rate_interval(7 / 10, 10) == wilson_interval(7, 10)
    with pytest.raises(ValueError, match="share of 10"):
        successes(0.55, 10)
    with pytest.raises(ValueError):
        successes(1.2, 10)


def test_mean_interval_is_wilson_at_the_mean_with_the_smallest_count():
    assert mean_interval([0.7, 0.7], [10, 10]) == pytest.approx(wilson_interval(7, 10))
    low, high = mean_interval([0.6, 0.8], [10, 20])
    assert (low, high) == pytest.approx(wilson_interval(7, 10))  # mean 0.7, n = min(10, 20)
    pooled = wilson_interval(14, 20)  # treating the languages' trials as independent would be narrower
    assert high - low > pooled[1] - pooled[0]
    with pytest.raises(ValueError):
        mean_interval([0.5], [10, 10])
    with pytest.raises(ValueError):
        mean_interval([], [])


def test_with_intervals_places_each_interval_after_its_metric():
    figures = {"top1": 0.7, "top5": 0.9, "mean_per_class_recall": 0.6, "n": 10}
    out = with_intervals(figures, {"top1": "n", "top5": "n"})
    assert list(out) == ["top1", "top1_ci95", "top5", "top5_ci95", "mean_per_class_recall", "n"]
    assert out["top1_ci95"] == pytest.approx(list(wilson_interval(7, 10)))
    assert figures == {"top1": 0.7, "top5": 0.9, "mean_per_class_recall": 0.6, "n": 10}  # the input is not changed
    assert ci_key("i2t_R@1") == "i2t_R@1_ci95"


def test_format_rate():
    assert format_rate(0.634, [0.6021, 0.6654]) == "63.4% [60.2, 66.5]"
    assert format_rate(1.0, (0.7225, 1.0)) == "100.0% [72.2, 100.0]"
    assert format_rate(0.5) == "50.0%"
