"""Study-level evaluation on a MURA split: metrics (numpy only), Markdown report and ROC plot.

As in the MURA paper, a study's P(abnormal) is the mean of its images' P(abnormal) and it is
called abnormal at or above the body part's threshold. Metrics are computed per body part
on studies, with ``1 = abnormal`` as the positive class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inference.decoding import DecodeError, decode_image
from inference.mura import MuraStudy, body_parts_in
from inference.predictor import Predictor
from inference.registry import LoadedModel, ModelRegistry


@dataclass(frozen=True)
class ConfusionMatrix:
    true_negative: int
    false_positive: int
    false_negative: int
    true_positive: int

    @property
    def total(self) -> int:
        return self.true_negative + self.false_positive + self.false_negative + self.true_positive


@dataclass(frozen=True)
class BinaryMetrics:
    count: int
    positives: int
    threshold: float
    kappa: float
    auroc: float  # NaN when only one class is present
    sensitivity: float  # NaN without positives
    specificity: float  # NaN without negatives
    accuracy: float
    confusion: ConfusionMatrix
    roc_fpr: np.ndarray = field(repr=False)
    roc_tpr: np.ndarray = field(repr=False)


def _as_arrays(labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray):
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D and of equal length, got {y.shape} and {s.shape}")
    return y, s


def confusion_matrix(*, labels: Sequence[bool], predicted: Sequence[bool]) -> ConfusionMatrix:
    """Counts of true/false negatives/positives, with ``True`` = abnormal."""
    y = np.asarray(labels, dtype=bool)
    p = np.asarray(predicted, dtype=bool)
    return ConfusionMatrix(
        true_negative=int(np.sum(~y & ~p)),
        false_positive=int(np.sum(~y & p)),
        false_negative=int(np.sum(y & ~p)),
        true_positive=int(np.sum(y & p)),
    )


def cohen_kappa(matrix: ConfusionMatrix) -> float:
    """Cohen's kappa between the labels and the predictions summarised in ``matrix``."""
    n = matrix.total
    if n == 0:
        return float("nan")
    observed = (matrix.true_positive + matrix.true_negative) / n
    label_pos = (matrix.true_positive + matrix.false_negative) / n
    pred_pos = (matrix.true_positive + matrix.false_positive) / n
    expected = label_pos * pred_pos + (1 - label_pos) * (1 - pred_pos)
    if expected == 1.0:
        # Labels and predictions all in one class: agreement is entirely by chance, kappa is undefined.
        return float("nan")
    return (observed - expected) / (1 - expected)


def roc_curve(
    *, labels: Sequence[bool], scores: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct score used as threshold (``score >= t``).

    Starts at (0, 0) with threshold +inf; tied scores move the curve diagonally.
    """
    y, s = _as_arrays(labels, scores)
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    # The last index of each run of equal scores: a threshold admits all tied studies at once.
    last_of_run = np.r_[np.nonzero(np.diff(s))[0], y.size - 1] if y.size else np.array([], dtype=int)
    tps = np.cumsum(y)[last_of_run]
    fps = np.cumsum(~y)[last_of_run]
    positives, negatives = int(y.sum()), int((~y).sum())
    tpr = np.r_[0.0, tps / positives] if positives else np.full(tps.size + 1, np.nan)
    fpr = np.r_[0.0, fps / negatives] if negatives else np.full(fps.size + 1, np.nan)
    thresholds = np.r_[np.inf, s[last_of_run]]
    return fpr, tpr, thresholds


def auroc(*, labels: Sequence[bool], scores: Sequence[float]) -> float:
    """Area under the ROC curve (trapezoids, so a tie counts one half); NaN with a single class."""
    fpr, tpr, _ = roc_curve(labels=labels, scores=scores)
    if np.isnan(fpr).any() or np.isnan(tpr).any():
        return float("nan")
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def binary_metrics(*, labels: Sequence[bool], scores: Sequence[float], threshold: float) -> BinaryMetrics:
    """All study-level figures for one body part; ``score >= threshold`` is called abnormal."""
    y, s = _as_arrays(labels, scores)
    matrix = confusion_matrix(labels=y, predicted=s >= threshold)
    positives = matrix.true_positive + matrix.false_negative
    negatives = matrix.true_negative + matrix.false_positive
    fpr, tpr, _ = roc_curve(labels=y, scores=s)
    return BinaryMetrics(
        count=matrix.total,
        positives=positives,
        threshold=threshold,
        kappa=cohen_kappa(matrix),
        auroc=auroc(labels=y, scores=s),
        sensitivity=matrix.true_positive / positives if positives else float("nan"),
        specificity=matrix.true_negative / negatives if negatives else float("nan"),
        accuracy=(matrix.true_positive + matrix.true_negative) / matrix.total
        if matrix.total
        else float("nan"),
        confusion=matrix,
        roc_fpr=fpr,
        roc_tpr=tpr,
    )


@dataclass(frozen=True)
class StudyScore:
    key: str
    abnormal: bool
    probability: float  # mean of the images' P(abnormal)
    images: int


@dataclass(frozen=True)
class BodyPartEvaluation:
    body_part: str
    model_name: str
    model_version: str
    demo: bool
    metrics: BinaryMetrics
    studies: list[StudyScore]
    failed_images: list[tuple[Path, str]]  # (path, reason) of images that could not be decoded
    skipped_studies: int  # studies none of whose images could be decoded


def score_studies(
    *,
    studies: Sequence[MuraStudy],
    predict_images: Callable[[Sequence[Path]], list[float | str]],
) -> tuple[list[StudyScore], list[tuple[Path, str]], int]:
    """Mean P(abnormal) per study from ``predict_images`` (a probability, or an error text, per path)."""
    paths = [path for study in studies for path in study.image_paths]
    outcomes = predict_images(paths)
    by_path = dict(zip(paths, outcomes, strict=True))
    scores, failed, skipped = [], [], 0
    for study in studies:
        probabilities = []
        for path in study.image_paths:
            outcome = by_path[path]
            if isinstance(outcome, str):
                failed.append((path, outcome))
            else:
                probabilities.append(outcome)
        if not probabilities:
            skipped += 1
            continue
        scores.append(
            StudyScore(study.key, study.abnormal, float(np.mean(probabilities)), len(probabilities))
        )
    return scores, failed, skipped


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if np.isnan(value) else f"{value:.{digits}f}"


def write_roc_plot(*, evaluations: Sequence[BodyPartEvaluation], path: Path) -> Path:
    """One ROC curve per body part on a single PNG (Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 6), dpi=100)
    try:
        axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
        for evaluation in evaluations:
            m = evaluation.metrics
            if np.isnan(m.auroc):
                continue
            axes.plot(
                m.roc_fpr, m.roc_tpr, linewidth=2, label=f"{evaluation.body_part} (AUROC {m.auroc:.3f})"
            )
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1.01)
        axes.set_xlabel("1 - specificity (false-positive rate)")
        axes.set_ylabel("sensitivity (true-positive rate)")
        axes.set_title("Study-level ROC")
        axes.legend(loc="lower right")
        figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, format="png")
    finally:
        plt.close(figure)
    return path


def render_report(*, evaluations: Sequence[BodyPartEvaluation], split: str, roc_png: str) -> str:
    """The Markdown report: a summary table, then a confusion matrix per body part."""
    lines = [
        f"# MURA {split} split: study-level evaluation",
        "",
        "A study's P(abnormal) is the mean of its images' P(abnormal); it is called abnormal at or above "
        "the body part's threshold. Positive class = abnormal.",
        "",
        "| body part | model | version | studies | abnormal | threshold | Cohen's kappa | AUROC "
        "| sensitivity | specificity | accuracy |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for e in evaluations:
        m = e.metrics
        model = f"{e.model_name} (demo)" if e.demo else e.model_name
        lines.append(
            f"| {e.body_part} | {model} | {e.model_version[:12]} | {m.count} | {m.positives} "
            f"| {m.threshold:g} | {_fmt(m.kappa)} | {_fmt(m.auroc)} | {_fmt(m.sensitivity)} "
            f"| {_fmt(m.specificity)} | {_fmt(m.accuracy)} |"
        )
    lines += ["", f"![Study-level ROC curves]({roc_png})", ""]
    for e in evaluations:
        c = e.metrics.confusion
        lines += [
            f"## {e.body_part}",
            "",
            "| | predicted normal | predicted abnormal |",
            "| --- | ---: | ---: |",
            f"| **normal** | {c.true_negative} | {c.false_positive} |",
            f"| **abnormal** | {c.false_negative} | {c.true_positive} |",
            "",
        ]
        if e.demo:
            lines += ["Demo model — not for clinical use.", ""]
        if e.failed_images or e.skipped_studies:
            lines.append(
                f"{len(e.failed_images)} image(s) could not be decoded and were left out; "
                f"{e.skipped_studies} study(ies) had no readable image and are not counted."
            )
            lines += [f"- `{path}`: {reason}" for path, reason in e.failed_images[:20]]
            lines.append("")
    return "\n".join(lines)


def write_report(
    *, evaluations: Sequence[BodyPartEvaluation], split: str, out_dir: Path
) -> tuple[Path, Path]:
    """Write ``report.md`` and ``roc.png`` into ``out_dir``; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    roc_path = write_roc_plot(evaluations=evaluations, path=out_dir / "roc.png")
    report_path = out_dir / "report.md"
    report_path.write_text(render_report(evaluations=evaluations, split=split, roc_png=roc_path.name))
    return report_path, roc_path


def predict_image_files(*, predictor: Predictor, paths: Sequence[Path], chunk: int = 64) -> list[float | str]:
    """P(abnormal) per file, or the reason a file could not be read; decodes ``chunk`` files at a time."""
    outcomes: list[float | str] = []
    for start in range(0, len(paths), chunk):
        decoded, positions = [], []
        part: list[float | str] = []
        for path in paths[start : start + chunk]:
            try:
                decoded.append(decode_image(path.read_bytes()))
                positions.append(len(part))
                part.append(float("nan"))
            except (OSError, DecodeError) as error:
                part.append(str(error))
        if decoded:
            probabilities = predictor.abnormal_probabilities(predictor.preprocess(decoded))
            for position, probability in zip(positions, probabilities, strict=True):
                part[position] = float(probability)
        outcomes.extend(part)
    return outcomes


def evaluate_model(
    *, studies: Sequence[MuraStudy], loaded: LoadedModel, batch_size: int = 16
) -> BodyPartEvaluation:
    """Evaluate one loaded model on ``studies`` (all of its body part), study by study."""
    predictor = Predictor(loaded, batch_size=batch_size)
    scores, failed, skipped = score_studies(
        studies=studies,
        predict_images=lambda paths: predict_image_files(predictor=predictor, paths=paths),
    )
    metrics = binary_metrics(
        labels=[score.abnormal for score in scores],
        scores=[score.probability for score in scores],
        threshold=loaded.spec.threshold,
    )
    return BodyPartEvaluation(
        body_part=loaded.spec.body_part,
        model_name=loaded.spec.name,
        model_version=loaded.version,
        demo=loaded.spec.demo,
        metrics=metrics,
        studies=scores,
        failed_images=failed,
        skipped_studies=skipped,
    )


def evaluate_studies(
    *, studies: Sequence[MuraStudy], registry: ModelRegistry, batch_size: int = 16
) -> list[BodyPartEvaluation]:
    """Evaluate every body part of ``studies`` that has an installed model in ``registry``."""
    return [
        evaluate_model(
            studies=[study for study in studies if study.body_part == body_part],
            loaded=registry.get(body_part),
            batch_size=batch_size,
        )
        for body_part in body_parts_in(list(studies))
        if registry.available(body_part)
    ]
