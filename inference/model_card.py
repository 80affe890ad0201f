"""Validation cards: what one model version was validated on, and how it did, as JSON beside the model.

A card lives at ``<model_dir>/cards/<sha256 of the weight file>.json``, so it belongs to exactly one
model version: replacing the file (a new sha256) leaves the old card behind, unused, and the new
version shows "not validated here" until it is validated. Schema 1::

    {"schema": 1, "model_name", "body_part", "model_version", "demo", "threshold",
     "validated_on": {"set", "path", "date", "studies", "abnormal_studies", "normal_studies",
                      "images", "failed_images"},
     "metrics": {"kappa" | "auroc" | "sensitivity" | "specificity": {"value", "low", "high"}},
     "ci": "<how the intervals were computed>", "roc": {"fpr": [...], "tpr": [...]}, "created_at"}

All figures are study-level (a study's P(abnormal) is the mean of its images'), positive class =
abnormal, at the model's threshold; an undefined figure (e.g. AUROC with one class) is ``null``.

Only stdlib and numpy are imported here: the web process reads cards and must not import TensorFlow.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from inference.confidence import CI_METHOD, Interval, bootstrap_intervals, wilson_interval

if TYPE_CHECKING:
    from inference.evaluation import BodyPartEvaluation

SCHEMA = 1
CARDS_DIR = "cards"
MURA_VALID = "MURA-v1.1 valid"
METRICS = ("kappa", "auroc", "sensitivity", "specificity")
_VERSION = re.compile(r"[0-9a-f]{64}")
_REQUIRED_KEYS = {
    "schema",
    "model_name",
    "body_part",
    "model_version",
    "demo",
    "threshold",
    "validated_on",
    "metrics",
    "ci",
    "roc",
    "created_at",
}


class ModelCardError(ValueError):
    """A card file that cannot be read or a card that does not follow the schema."""


def card_path(*, model_dir: Path, version: str) -> Path:
    """Where the card of model version ``version`` (a sha256) lives in ``model_dir``."""
    if not _VERSION.fullmatch(version):
        # The version becomes a file name: never let anything but a lower-case sha256 through.
        raise ModelCardError(f"model version must be a lower-case sha256 (64 hex digits), got {version!r}")
    return Path(model_dir) / CARDS_DIR / f"{version}.json"


def read_card(*, model_dir: Path, version: str) -> dict | None:
    """The card of a model version, or None when it has none; a corrupt card raises ModelCardError."""
    path = card_path(model_dir=model_dir, version=version)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelCardError(f"validation card {path} cannot be read: {exc}") from exc
    try:
        card = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelCardError(f"validation card {path} is not valid JSON: {exc}") from exc
    _check(card, where=f"validation card {path}")
    if card["model_version"] != version:
        raise ModelCardError(
            f"validation card {path} is for model version {card['model_version']}, not {version}"
        )
    return card


def write_card(*, model_dir: Path, card: dict) -> Path:
    """Write ``card`` atomically (temp file, then rename) to its place in ``model_dir``; returns the path."""
    _check(card, where="validation card")
    path = card_path(model_dir=model_dir, version=card["model_version"])
    # Imported here: it pulls in the registry (and Keras), which the readers of cards must not pay for.
    from inference.manifest_writer import write_text_atomically

    # allow_nan=False: NaN is not JSON; undefined figures must already be null.
    text = json.dumps(card, indent=2, allow_nan=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path=path, text=text)
    return path


def _check(card: object, *, where: str) -> None:
    if not isinstance(card, dict):
        raise ModelCardError(f"{where}: expected a JSON object")
    if card.get("schema") != SCHEMA:
        raise ModelCardError(f"{where}: unsupported schema {card.get('schema')!r} (this app reads {SCHEMA})")
    missing = _REQUIRED_KEYS - set(card)
    if missing:
        raise ModelCardError(f"{where}: missing keys {sorted(missing)}")
    if not isinstance(card["model_version"], str) or not _VERSION.fullmatch(card["model_version"]):
        raise ModelCardError(f"{where}: model_version must be a lower-case sha256")
    metrics = card["metrics"]
    if not isinstance(metrics, dict) or set(metrics) != set(METRICS):
        raise ModelCardError(f"{where}: metrics must hold exactly {', '.join(METRICS)}")
    for name in METRICS:
        if not isinstance(metrics[name], dict) or set(metrics[name]) != {"value", "low", "high"}:
            raise ModelCardError(f"{where}: metrics.{name} must be {{value, low, high}}")


def _number(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _figure(value: float, interval: Interval) -> dict[str, float | None]:
    return {"value": _number(value), "low": _number(interval.low), "high": _number(interval.high)}


def build_card(*, evaluation: BodyPartEvaluation, set_name: str, set_path: str, validated_on: date) -> dict:
    """The card of the model evaluated in ``evaluation`` (one body part of a MURA-layout set)."""
    m = evaluation.metrics
    c = m.confusion
    labels = [score.abnormal for score in evaluation.studies]
    scores = [score.probability for score in evaluation.studies]
    boot = bootstrap_intervals(labels=labels, scores=scores, threshold=m.threshold)
    sensitivity = wilson_interval(successes=c.true_positive, trials=c.true_positive + c.false_negative)
    specificity = wilson_interval(successes=c.true_negative, trials=c.true_negative + c.false_positive)
    positives = c.true_positive + c.false_negative
    negatives = c.true_negative + c.false_positive
    roc_defined = not (math.isnan(m.auroc) or len(m.roc_fpr) == 0)
    return {
        "schema": SCHEMA,
        "model_name": evaluation.model_name,
        "body_part": evaluation.body_part,
        "model_version": evaluation.model_version,
        "demo": bool(evaluation.demo),
        "threshold": float(m.threshold),
        "validated_on": {
            "set": set_name,
            "path": set_path,
            "date": validated_on.isoformat(),
            "studies": m.count,
            "abnormal_studies": positives,
            "normal_studies": negatives,
            "images": sum(score.images for score in evaluation.studies),
            "failed_images": len(evaluation.failed_images),
        },
        "metrics": {
            "kappa": _figure(m.kappa, boot.kappa),
            "auroc": _figure(m.auroc, boot.auroc),
            "sensitivity": _figure(m.sensitivity, sensitivity),
            "specificity": _figure(m.specificity, specificity),
        },
        "ci": CI_METHOD,
        "roc": {
            "fpr": [round(float(x), 6) for x in m.roc_fpr] if roc_defined else [],
            "tpr": [round(float(y), 6) for y in m.roc_tpr] if roc_defined else [],
        },
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
