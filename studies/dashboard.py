"""Model monitoring figures for the dashboard: pure functions, no database access.

Agreement compares the model's label at the time of the review (`Review.model_label`) with the
radiologist's final label; "abnormal" is the positive class. The flagged rate is the share of
studies whose result the model labelled abnormal (whether or not a radiologist has since ruled).

Drift rule ("far"): the flagged rate of the last `DRIFT_WINDOW_DAYS` days is compared with the
long-run rate of the studies before that window. The recent count of flagged studies is binomial
with n = recent studies and p = long-run rate, so its rate has standard error sqrt(p(1-p)/n).
A warning is raised when the recent rate is more than `DRIFT_Z` standard errors away from the
long-run rate, and both the window and the long run hold at least `DRIFT_MIN_STUDIES` studies
(fewer is too noisy to mean anything). A long-run rate of exactly 0 or 1 would give a zero
standard error, so p is kept at least half a study away from 0 and 1.

Result tiers: each result is abnormal, normal or indeterminate (inside the model's band: no call).
Per tier, how often it occurs (share of the group's results) and how radiologists ruled on the
studies the model put in that tier when they reviewed them: for abnormal and normal, the share they
confirmed; for indeterminate, the share they ruled abnormal and normal. Every figure comes with
the number of studies behind it. Indeterminate results are not calls, so they are left out of the
confusion matrix, kappa, sensitivity and specificity, which measure the model's calls.

Every rate is an `Estimate`: the figure, its 95 % confidence interval and the number of studies
behind it, with the intervals of the validation cards (inference.confidence): Wilson's for a
proportion, the percentile bootstrap over studies, stratified by the radiologist's label, for
kappa. A figure that rests on fewer than `MIN_TO_JUDGE` studies says it is too few to judge.
"""

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

from inference.confidence import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    CONFIDENCE,
    weighted_kappa,
    wilson_interval,
)

POSITIVE = "abnormal"
NEGATIVE = "normal"
INDETERMINATE = "indeterminate"
TIERS = (POSITIVE, INDETERMINATE, NEGATIVE)  # the dashboard's column order
DRIFT_WINDOW_DAYS = 7
DRIFT_Z = 2.0
DRIFT_MIN_STUDIES = 10
MIN_TO_JUDGE = 10  # fewer studies behind a figure: shown, with its interval, as too few to judge


@dataclass(frozen=True)
class Estimate:
    """A figure with its 95 % confidence interval and the number of studies behind it.

    `noun` names what `n` counts ("abnormal study" / "abnormal studies"); `value` is None when the
    figure is undefined (nothing to count, or kappa where only chance agreement is possible), and
    `low`/`high` are None when there is no interval.
    """

    value: float | None
    low: float | None
    high: float | None
    n: int
    noun: tuple[str, str]  # singular, plural
    successes: int | None = None  # for a proportion: how many of the n

    @property
    def counted(self) -> str:
        """ "10 abnormal studies", "1 review"."""
        return f"{self.n} {self.noun[0] if self.n == 1 else self.noun[1]}"

    @property
    def too_few(self) -> bool:
        return self.n < MIN_TO_JUDGE

    @property
    def caveat(self) -> str:
        """ "only 2 reviews: too few to judge", or "" when there are enough."""
        if self.n == 0:
            return f"no {self.noun[0]} yet"
        return f"only {self.counted}: too few to judge" if self.too_few else ""

    def as_dict(self) -> dict:
        """The figure for the charts' JSON."""
        return {
            "value": self.value,
            "low": self.low,
            "high": self.high,
            "n": self.n,
            "counted": self.counted,
            "caveat": self.caveat,
        }


STUDIES = ("study", "studies")
REVIEWS = ("review", "reviews")
RULINGS = ("ruling", "rulings")


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def proportion(*, successes: int, trials: int, noun: tuple[str, str] = STUDIES) -> Estimate:
    """successes / trials with Wilson's 95 % interval (undefined, None, when trials is 0)."""
    interval = wilson_interval(successes=successes, trials=trials)
    return Estimate(
        value=successes / trials if trials else None,
        low=_finite(interval.low),
        high=_finite(interval.high),
        n=trials,
        noun=noun,
        successes=successes,
    )


def kappa_estimate(*, matrix: "ConfusionMatrix") -> Estimate:
    """Cohen's kappa with the validation cards' interval: a percentile bootstrap over the reviewed
    calls, stratified by the radiologist's label, scored by inference.confidence.weighted_kappa.

    With two labels each study is one of four cells (TP, FN, FP, TN), so a resample is drawn as
    counts per cell: drawing a stratum's studies one by one with replacement gives a multinomial
    over its two cells, the same distribution at a cost that does not grow with the number of
    studies (the per-study resampling takes seconds at a few thousand reviews).
    """
    n = matrix.total
    value = cohen_kappa(matrix=matrix)
    if value is None:
        return Estimate(value=None, low=None, high=None, n=n, noun=REVIEWS)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    cells = np.array(
        [matrix.true_positive, matrix.false_negative, matrix.false_positive, matrix.true_negative]
    )
    truly_abnormal = np.array([True, True, False, False])
    model_abnormal = np.array([True, False, True, False])
    weights = np.zeros((BOOTSTRAP_RESAMPLES, 4), dtype=np.int64)
    for stratum in (slice(0, 2), slice(2, 4)):
        size = int(cells[stratum].sum())
        if size:
            weights[:, stratum] = rng.multinomial(size, cells[stratum] / size, size=BOOTSTRAP_RESAMPLES)
    kappas = weighted_kappa(labels=truly_abnormal, predicted=model_abnormal, weights=weights)
    kappas = kappas[np.isfinite(kappas)]
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(kappas, [tail, 100 - tail]) if kappas.size else (math.nan, math.nan)
    if low == high:
        # Every resample alike (one or two reviews): a zero-width interval would claim certainty.
        low = high = math.nan
    return Estimate(value=value, low=_finite(low), high=_finite(high), n=n, noun=REVIEWS)


@dataclass(frozen=True)
class ConfusionMatrix:
    """Counts with the model's label as the prediction and the radiologist's as the truth."""

    true_positive: int = 0
    false_positive: int = 0
    false_negative: int = 0
    true_negative: int = 0

    @property
    def total(self) -> int:
        return self.true_positive + self.false_positive + self.false_negative + self.true_negative


@dataclass(frozen=True)
class DriftCheck:
    recent_studies: int
    recent_flagged: int
    baseline_studies: int
    baseline_flagged: int
    recent_rate: float | None
    baseline_rate: float | None
    z_score: float | None
    warning: bool


@dataclass(frozen=True)
class ResultRecord:
    """One study's model result."""

    body_part: str
    model_name: str
    model_version: str
    demo: bool
    label: str
    created_at: datetime


@dataclass(frozen=True)
class ReviewRecord:
    """The latest radiologist ruling on one study."""

    body_part: str
    model_version: str
    model_label: str
    final_label: str


@dataclass(frozen=True)
class TierFigures:
    """How often one result tier occurs in a group, and how radiologists ruled on it."""

    tier: str
    studies: int  # results in this tier
    total: int  # results in the group
    reviewed: int  # rulings on studies the model had put in this tier
    ruled_abnormal: int
    ruled_normal: int

    @property
    def share(self) -> float | None:
        return self.studies / self.total if self.total else None

    @property
    def confirmed(self) -> int | None:
        """Rulings that agree with the tier; None for indeterminate (there was no call to agree with)."""
        if self.tier == POSITIVE:
            return self.ruled_abnormal
        if self.tier == NEGATIVE:
            return self.ruled_normal
        return None

    @property
    def agreement(self) -> float | None:
        """The share of rulings that confirmed the tier; None without rulings or for indeterminate."""
        confirmed = self.confirmed
        return confirmed / self.reviewed if confirmed is not None and self.reviewed else None

    @property
    def ruled_abnormal_rate(self) -> float | None:
        return self.ruled_abnormal / self.reviewed if self.reviewed else None

    @property
    def ruled_normal_rate(self) -> float | None:
        return self.ruled_normal / self.reviewed if self.reviewed else None

    # The same figures with their intervals and counts, as the dashboard shows them.
    @property
    def share_estimate(self) -> Estimate:
        return proportion(successes=self.studies, trials=self.total)

    @property
    def agreement_estimate(self) -> Estimate | None:
        confirmed = self.confirmed
        if confirmed is None:
            return None
        return proportion(successes=confirmed, trials=self.reviewed, noun=REVIEWS)

    @property
    def ruled_abnormal_estimate(self) -> Estimate:
        return proportion(successes=self.ruled_abnormal, trials=self.reviewed, noun=RULINGS)

    @property
    def ruled_normal_estimate(self) -> Estimate:
        return proportion(successes=self.ruled_normal, trials=self.reviewed, noun=RULINGS)


def tier_figures(*, labels: Iterable[str], pairs: Iterable[tuple[str, str]]) -> list[TierFigures]:
    """Per tier (abnormal, indeterminate, normal): from the results' labels and (model label at
    review, final label) pairs."""
    labels = list(labels)
    occurrences = {tier: 0 for tier in TIERS}
    for label in labels:
        occurrences[label] = occurrences.get(label, 0) + 1
    rulings = {tier: [0, 0] for tier in TIERS}  # [ruled abnormal, ruled normal]
    for model_label, final_label in pairs:
        counts = rulings.setdefault(model_label, [0, 0])
        counts[0 if final_label == POSITIVE else 1] += 1
    return [
        TierFigures(
            tier=tier,
            studies=occurrences[tier],
            total=len(labels),
            reviewed=sum(rulings[tier]),
            ruled_abnormal=rulings[tier][0],
            ruled_normal=rulings[tier][1],
        )
        for tier in TIERS
    ]


@dataclass
class GroupSummary:
    body_part: str
    model_version: str
    model_name: str = ""
    demo: bool = False
    studies: int = 0
    flagged: int = 0
    reviewed: int = 0  # rulings, whatever the tier
    calls_reviewed: int = 0  # rulings on abnormal or normal results: what the confusion matrix counts
    tiers: list[TierFigures] = field(default_factory=list)
    confusion: ConfusionMatrix = field(default_factory=ConfusionMatrix)
    kappa: float | None = None
    sensitivity: float | None = None
    specificity: float | None = None
    drift: DriftCheck | None = None
    # The rates with their intervals and counts: flagged_rate, recent_rate (the drift window),
    # baseline_rate (before it), kappa, sensitivity, specificity (see Estimate).
    figures: dict[str, Estimate] = field(default_factory=dict)

    @property
    def flagged_rate(self) -> float | None:
        return self.flagged / self.studies if self.studies else None


def confusion_matrix(*, pairs: Iterable[tuple[str, str]]) -> ConfusionMatrix:
    """Counts (model label, final label) pairs; anything but "abnormal" counts as negative."""
    tp = fp = fn = tn = 0
    for predicted, truth in pairs:
        predicted_positive = predicted == POSITIVE
        truly_positive = truth == POSITIVE
        if predicted_positive and truly_positive:
            tp += 1
        elif predicted_positive:
            fp += 1
        elif truly_positive:
            fn += 1
        else:
            tn += 1
    return ConfusionMatrix(true_positive=tp, false_positive=fp, false_negative=fn, true_negative=tn)


def sensitivity(*, matrix: ConfusionMatrix) -> float | None:
    """TP / (TP + FN); None when no study was truly abnormal."""
    positives = matrix.true_positive + matrix.false_negative
    return matrix.true_positive / positives if positives else None


def specificity(*, matrix: ConfusionMatrix) -> float | None:
    """TN / (TN + FP); None when no study was truly normal."""
    negatives = matrix.true_negative + matrix.false_positive
    return matrix.true_negative / negatives if negatives else None


def cohen_kappa(*, matrix: ConfusionMatrix) -> float | None:
    """Cohen's kappa between model and radiologist; None when it is undefined (chance agreement 1)."""
    n = matrix.total
    if not n:
        return None
    observed = (matrix.true_positive + matrix.true_negative) / n
    model_pos = (matrix.true_positive + matrix.false_positive) / n
    truth_pos = (matrix.true_positive + matrix.false_negative) / n
    expected = model_pos * truth_pos + (1 - model_pos) * (1 - truth_pos)
    if math.isclose(expected, 1.0):
        return None
    return (observed - expected) / (1 - expected)


def drift_check(
    *, recent_studies: int, recent_flagged: int, baseline_studies: int, baseline_flagged: int
) -> DriftCheck:
    """Compares the recent flagged rate with the long-run one (the rule is in the module docstring)."""
    recent_rate = recent_flagged / recent_studies if recent_studies else None
    baseline_rate = baseline_flagged / baseline_studies if baseline_studies else None
    z_score = None
    if recent_rate is not None and baseline_rate is not None:
        floor = 0.5 / baseline_studies
        p = min(max(baseline_rate, floor), 1 - floor)
        standard_error = math.sqrt(p * (1 - p) / recent_studies)
        z_score = (recent_rate - baseline_rate) / standard_error
    warning = (
        z_score is not None
        and recent_studies >= DRIFT_MIN_STUDIES
        and baseline_studies >= DRIFT_MIN_STUDIES
        and abs(z_score) > DRIFT_Z
    )
    return DriftCheck(
        recent_studies=recent_studies,
        recent_flagged=recent_flagged,
        baseline_studies=baseline_studies,
        baseline_flagged=baseline_flagged,
        recent_rate=recent_rate,
        baseline_rate=baseline_rate,
        z_score=z_score,
        warning=warning,
    )


def summarize(
    *, results: Sequence[ResultRecord], reviews: Sequence[ReviewRecord], now: datetime
) -> list[GroupSummary]:
    """One summary per (body part, model version), sorted by body part then version."""
    groups: dict[tuple[str, str], GroupSummary] = {}
    window_start = now - timedelta(days=DRIFT_WINDOW_DAYS)
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    labels: dict[tuple[str, str], list[str]] = defaultdict(list)
    for result in results:
        key = (result.body_part, result.model_version)
        group = groups.setdefault(key, GroupSummary(body_part=result.body_part, model_version=key[1]))
        group.model_name = result.model_name
        group.demo = group.demo or result.demo
        group.studies += 1
        labels[key].append(result.label)
        is_flagged = result.label == POSITIVE
        group.flagged += is_flagged
        # counts: recent n, recent flagged, baseline n, baseline flagged
        offset = 0 if result.created_at >= window_start else 2
        counts[key][offset] += 1
        counts[key][offset + 1] += is_flagged

    pairs: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for review in reviews:
        pairs[(review.body_part, review.model_version)].append((review.model_label, review.final_label))

    for key in pairs:
        groups.setdefault(key, GroupSummary(body_part=key[0], model_version=key[1]))
    for key, group in groups.items():
        group_pairs = pairs.get(key, [])
        matrix = confusion_matrix(pairs=[pair for pair in group_pairs if pair[0] != INDETERMINATE])
        group.reviewed = len(group_pairs)
        group.calls_reviewed = matrix.total
        group.tiers = tier_figures(labels=labels[key], pairs=group_pairs)
        group.confusion = matrix
        group.kappa = cohen_kappa(matrix=matrix)
        group.sensitivity = sensitivity(matrix=matrix)
        group.specificity = specificity(matrix=matrix)
        recent_n, recent_flagged, baseline_n, baseline_flagged = counts[key]
        group.drift = drift_check(
            recent_studies=recent_n,
            recent_flagged=recent_flagged,
            baseline_studies=baseline_n,
            baseline_flagged=baseline_flagged,
        )
        group.figures = {
            "flagged_rate": proportion(successes=group.flagged, trials=group.studies),
            "recent_rate": proportion(successes=recent_flagged, trials=recent_n),
            "baseline_rate": proportion(successes=baseline_flagged, trials=baseline_n),
            "kappa": kappa_estimate(matrix=matrix),
            "sensitivity": proportion(
                successes=matrix.true_positive,
                trials=matrix.true_positive + matrix.false_negative,
                noun=("abnormal study", "abnormal studies"),
            ),
            "specificity": proportion(
                successes=matrix.true_negative,
                trials=matrix.true_negative + matrix.false_positive,
                noun=("normal study", "normal studies"),
            ),
        }
    return [groups[key] for key in sorted(groups)]


def tier_totals(*, results: Sequence[ResultRecord], reviews: Sequence[ReviewRecord]) -> list[TierFigures]:
    """The tier figures over every body part and model version together."""
    return tier_figures(
        labels=(result.label for result in results),
        pairs=((review.model_label, review.final_label) for review in reviews),
    )


DEMO_NOTICE = "demo model — not for clinical use"


def chart_data(*, summaries: Sequence[GroupSummary], body_part_names: dict[str, str]) -> dict:
    """What static/js/dashboard.js draws: per group, each figure with its interval and count, and
    whether any result behind the charts comes from a demo model (then every chart says so)."""
    figure_names = ("flagged_rate", "recent_rate", "baseline_rate", "kappa", "sensitivity", "specificity")
    return {
        "labels": [
            f"{body_part_names.get(s.body_part, s.body_part)} · {s.model_version[:8]}"
            + (" (demo)" if s.demo else "")
            for s in summaries
        ],
        "demo": any(s.demo for s in summaries),
        "demo_notice": DEMO_NOTICE,
        "min_to_judge": MIN_TO_JUDGE,
        **{name: [s.figures[name].as_dict() for s in summaries] for name in figure_names},
    }
