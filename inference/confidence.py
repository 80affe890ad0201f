"""95 % confidence intervals for the study-level figures of a validation card (numpy only).

- Sensitivity and specificity are binomial proportions: Wilson score interval, which stays inside
  [0, 1] and keeps sensible coverage at the small counts one body part of MURA's valid split has
  (and at 0/n or n/n, where the Wald interval collapses to a point).
- AUROC and Cohen's kappa have no simple closed form that holds at these sizes, so they get a
  percentile bootstrap over studies, stratified by label: each resample draws the abnormal and the
  normal studies separately, with replacement, so every resample keeps both classes (AUROC and
  kappa are defined in all of them) and the study counts of the validation set.

The bootstrap works on resample *counts* (how often each study is drawn), so all resamples are
scored at once with array operations instead of a Python loop per resample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
_Z = 1.959963984540054  # the standard normal's 97.5th percentile


@dataclass(frozen=True)
class Interval:
    low: float  # NaN when undefined
    high: float


def wilson_interval(*, successes: int, trials: int, z: float = _Z) -> Interval:
    """Wilson score interval for a proportion ``successes / trials``; NaN bounds when ``trials == 0``."""
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if trials == 0:
        return Interval(float("nan"), float("nan"))
    p = successes / trials
    z2 = z * z
    denominator = 1 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denominator
    half_width = z / denominator * np.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    # At 0/n and n/n the exact bound is 0 or 1; the formula lands a rounding error away from it.
    low = 0.0 if successes == 0 else float(centre - half_width)
    high = 1.0 if successes == trials else float(centre + half_width)
    return Interval(low, high)


def stratified_resample_counts(*, labels: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, n) draw counts: each row redraws the positives and the negatives with replacement."""
    counts = np.zeros((resamples, labels.size), dtype=np.int64)
    for members in (np.flatnonzero(labels), np.flatnonzero(~labels)):
        if members.size:
            counts[:, members] = rng.multinomial(
                members.size, np.full(members.size, 1 / members.size), size=resamples
            )
    return counts


def weighted_auroc(*, labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC for each row of ``weights`` (a study drawn k times counts k times); ties count one half.

    The Mann-Whitney form: over positive-negative pairs, the share where the positive scores higher.
    Studies are grouped by distinct score so that ties are handled exactly as ``evaluation.auroc``.
    """
    if scores.size == 0:
        return np.full(weights.shape[0], np.nan)
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    group_starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    sorted_weights = weights[:, order].astype(np.float64)
    sorted_labels = labels[order]
    # Per resample and distinct score: the weight of positives and of negatives with that score.
    per_group_pos = np.add.reduceat(sorted_weights * sorted_labels, group_starts, axis=1)
    per_group_neg = np.add.reduceat(sorted_weights * ~sorted_labels, group_starts, axis=1)
    negatives_below = np.cumsum(per_group_neg, axis=1) - per_group_neg
    wins = np.sum(per_group_pos * (negatives_below + 0.5 * per_group_neg), axis=1)
    pairs = per_group_pos.sum(axis=1) * per_group_neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, wins / pairs, np.nan)


def weighted_kappa(*, labels: np.ndarray, predicted: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Cohen's kappa for each row of ``weights``; NaN where agreement can only be by chance."""
    weights = weights.astype(np.float64)
    total = weights.sum(axis=1)
    true_positive = weights @ (labels & predicted)
    true_negative = weights @ (~labels & ~predicted)
    label_positive = weights @ labels / total
    predicted_positive = weights @ predicted / total
    observed = (true_positive + true_negative) / total
    expected = label_positive * predicted_positive + (1 - label_positive) * (1 - predicted_positive)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(expected < 1.0, (observed - expected) / (1 - expected), np.nan)


def _percentile_interval(values: np.ndarray) -> Interval:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return Interval(float("nan"), float("nan"))
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return Interval(float(low), float(high))


@dataclass(frozen=True)
class BootstrapIntervals:
    auroc: Interval
    kappa: Interval


def bootstrap_intervals(
    *,
    labels: Sequence[bool],
    scores: Sequence[float],
    threshold: float,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> BootstrapIntervals:
    """Percentile-bootstrap 95 % intervals of study-level AUROC and kappa (``score >= threshold``)."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D and of equal length, got {y.shape} and {s.shape}")
    if resamples < 1:
        raise ValueError("resamples must be at least 1")
    if y.size == 0:
        undefined = Interval(float("nan"), float("nan"))
        return BootstrapIntervals(auroc=undefined, kappa=undefined)
    counts = stratified_resample_counts(labels=y, resamples=resamples, rng=np.random.default_rng(seed))
    return BootstrapIntervals(
        auroc=_percentile_interval(weighted_auroc(labels=y, scores=s, weights=counts)),
        kappa=_percentile_interval(weighted_kappa(labels=y, predicted=s >= threshold, weights=counts)),
    )


CI_METHOD = (
    f"{CONFIDENCE:.0%} confidence intervals: Wilson score interval for sensitivity and specificity; "
    f"percentile bootstrap over studies ({BOOTSTRAP_RESAMPLES} resamples, stratified by label, "
    f"seed {BOOTSTRAP_SEED}) for Cohen's kappa and AUROC."
)
