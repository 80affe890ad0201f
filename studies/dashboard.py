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
"""

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

POSITIVE = "abnormal"
NEGATIVE = "normal"
INDETERMINATE = "indeterminate"
TIERS = (POSITIVE, INDETERMINATE, NEGATIVE)  # the dashboard's column order
DRIFT_WINDOW_DAYS = 7
DRIFT_Z = 2.0
DRIFT_MIN_STUDIES = 10


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
    return [groups[key] for key in sorted(groups)]


def tier_totals(*, results: Sequence[ResultRecord], reviews: Sequence[ReviewRecord]) -> list[TierFigures]:
    """The tier figures over every body part and model version together."""
    return tier_figures(
        labels=(result.label for result in results),
        pairs=((review.model_label, review.final_label) for review in reviews),
    )
