"""Validation cards: the confidence intervals against known values, and the card's JSON round trip."""

import json
import math
import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from inference.confidence import (
    CI_METHOD,
    bootstrap_intervals,
    weighted_auroc,
    weighted_kappa,
    wilson_interval,
)
from inference.evaluation import BodyPartEvaluation, StudyScore, auroc, binary_metrics, cohen_kappa
from inference.model_card import ModelCardError, build_card, card_path, read_card, write_card

VERSION = "ab" * 32

# --- Wilson -----------------------------------------------------------------------------------


def test_wilson_interval_matches_published_values():
    # 8/10: 0.4902 to 0.9433 (Newcombe 1998, method 3; also R's prop.test(correct=FALSE)).
    interval = wilson_interval(successes=8, trials=10)
    assert interval.low == pytest.approx(0.4902, abs=1e-4)
    assert interval.high == pytest.approx(0.9433, abs=1e-4)
    # 81/263: 0.2553 to 0.3662 (Newcombe 1998, table I, example iii, method 3).
    interval = wilson_interval(successes=81, trials=263)
    assert (interval.low, interval.high) == (pytest.approx(0.2553, abs=1e-4), pytest.approx(0.3662, abs=1e-4))


def test_wilson_interval_at_the_edges():
    none = wilson_interval(successes=0, trials=10)
    assert none.low == 0.0 and none.high == pytest.approx(0.2775, abs=1e-4)
    every = wilson_interval(successes=10, trials=10)
    assert every.high == 1.0 and every.low == pytest.approx(0.7225, abs=1e-4)
    empty = wilson_interval(successes=0, trials=0)
    assert math.isnan(empty.low) and math.isnan(empty.high)
    with pytest.raises(ValueError):
        wilson_interval(successes=11, trials=10)


# --- bootstrap ------------------------------------------------------------------------------


def _scored_studies(n: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.4
    # Rounded to two decimals so that ties occur, as they do with real probabilities.
    scores = np.round(np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1), 2)
    return labels, scores


def test_weighted_figures_with_unit_weights_equal_the_evaluation_metrics():
    labels, scores = _scored_studies(60, seed=3)
    ones = np.ones((1, labels.size), dtype=np.int64)
    expected = binary_metrics(labels=labels, scores=scores, threshold=0.5)
    assert weighted_auroc(labels=labels, scores=scores, weights=ones)[0] == pytest.approx(
        auroc(labels=labels, scores=scores)
    )
    assert weighted_kappa(labels=labels, predicted=scores >= 0.5, weights=ones)[0] == pytest.approx(
        cohen_kappa(expected.confusion)
    )


def test_weighted_figures_count_a_study_drawn_twice_twice():
    labels = np.array([True, True, False, False])
    scores = np.array([0.9, 0.4, 0.5, 0.1])
    weights = np.array([[2, 1, 1, 0]])
    repeated_labels = np.array([True, True, True, False])
    repeated_scores = np.array([0.9, 0.9, 0.4, 0.5])
    assert weighted_auroc(labels=labels, scores=scores, weights=weights)[0] == pytest.approx(
        auroc(labels=repeated_labels, scores=repeated_scores)
    )


def test_bootstrap_contains_the_estimate_narrows_with_n_and_is_seeded():
    widths = []
    for n in (40, 400):
        labels, scores = _scored_studies(n, seed=n)
        point = binary_metrics(labels=labels, scores=scores, threshold=0.5)
        intervals = bootstrap_intervals(labels=labels, scores=scores, threshold=0.5)
        assert intervals.auroc.low <= point.auroc <= intervals.auroc.high
        assert intervals.kappa.low <= point.kappa <= intervals.kappa.high
        assert 0.0 <= intervals.auroc.low < intervals.auroc.high <= 1.0
        widths.append(
            (intervals.auroc.high - intervals.auroc.low, intervals.kappa.high - intervals.kappa.low)
        )
        assert bootstrap_intervals(labels=labels, scores=scores, threshold=0.5) == intervals
    (small_auroc, small_kappa), (large_auroc, large_kappa) = widths
    # Ten times the studies: the width shrinks by about sqrt(10) ~ 3.2.
    assert large_auroc < small_auroc / 2 and large_kappa < small_kappa / 2


def test_bootstrap_with_a_single_class_is_undefined():
    intervals = bootstrap_intervals(labels=[True, True, True], scores=[0.2, 0.6, 0.9], threshold=0.5)
    assert math.isnan(intervals.auroc.low) and math.isnan(intervals.auroc.high)


# --- the card -------------------------------------------------------------------------------

STUDIES = [  # (abnormal, P(abnormal), images)
    (True, 0.917, 2),
    (True, 0.622, 1),
    (True, 0.269, 1),
    (False, 0.151, 2),
    (False, 0.731, 1),
    (False, 0.378, 1),
    (False, 0.047, 1),
]


def _evaluation(studies=STUDIES) -> BodyPartEvaluation:
    scores = [StudyScore(f"s{i}/", abnormal, p, images) for i, (abnormal, p, images) in enumerate(studies)]
    return BodyPartEvaluation(
        body_part="XR_WRIST",
        model_name="wrist",
        model_version=VERSION,
        demo=True,
        metrics=binary_metrics(
            labels=[s.abnormal for s in scores], scores=[s.probability for s in scores], threshold=0.5
        ),
        studies=scores,
        failed_images=[(Path("broken.png"), "truncated")],
        skipped_studies=0,
    )


def test_build_card_holds_the_evaluation_figures_with_intervals():
    evaluation = _evaluation()
    card = build_card(
        evaluation=evaluation,
        set_name="MURA-v1.1 valid",
        set_path="/data/mura",
        validated_on=date(2025, 3, 1),
    )
    assert card["schema"] == 1
    assert (card["model_name"], card["body_part"], card["model_version"], card["demo"]) == (
        "wrist",
        "XR_WRIST",
        VERSION,
        True,
    )
    assert card["threshold"] == 0.5
    assert card["validated_on"] == {
        "set": "MURA-v1.1 valid",
        "path": "/data/mura",
        "date": "2025-03-01",
        "studies": 7,
        "abnormal_studies": 3,
        "normal_studies": 4,
        "images": 9,
        "failed_images": 1,
    }
    m = evaluation.metrics
    # TP 2, FN 1, FP 1, TN 3 (the hand-computed case of test_train_evaluate).
    expected = {"kappa": 10 / 24, "auroc": 9 / 12, "sensitivity": 2 / 3, "specificity": 3 / 4}
    for name, value in expected.items():
        figure = card["metrics"][name]
        assert figure["value"] == pytest.approx(value) == pytest.approx(getattr(m, name))
        assert figure["low"] <= figure["value"] <= figure["high"]
    sensitivity = wilson_interval(successes=2, trials=3)
    assert (card["metrics"]["sensitivity"]["low"], card["metrics"]["sensitivity"]["high"]) == (
        pytest.approx(sensitivity.low),
        pytest.approx(sensitivity.high),
    )
    assert card["ci"] == CI_METHOD and "Wilson" in CI_METHOD and "bootstrap" in CI_METHOD
    assert card["roc"]["fpr"][0] == 0.0 and card["roc"]["tpr"][-1] == 1.0
    assert len(card["roc"]["fpr"]) == len(card["roc"]["tpr"]) == 8
    assert card["created_at"].endswith("+00:00")


def test_card_round_trips_through_its_file(tmp_path):
    card = build_card(evaluation=_evaluation(), set_name="s", set_path="p", validated_on=date(2025, 1, 2))
    assert read_card(model_dir=tmp_path, version=VERSION) is None
    path = write_card(model_dir=tmp_path, card=card)
    assert path == card_path(model_dir=tmp_path, version=VERSION) == tmp_path / "cards" / f"{VERSION}.json"
    assert read_card(model_dir=tmp_path, version=VERSION) == card
    assert path.stat().st_mode & 0o777 == 0o644  # the web process may run as another user
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_undefined_figures_are_null_not_nan(tmp_path):
    only_abnormal = [(True, 0.8, 1), (True, 0.3, 1)]
    card = build_card(
        evaluation=_evaluation(only_abnormal), set_name="s", set_path="p", validated_on=date(2025, 1, 2)
    )
    assert card["metrics"]["auroc"] == {"value": None, "low": None, "high": None}
    assert card["metrics"]["specificity"]["value"] is None
    assert card["roc"] == {"fpr": [], "tpr": []}
    path = write_card(model_dir=tmp_path, card=card)
    assert "NaN" not in path.read_text()


def test_corrupt_or_mismatched_cards_raise_a_clear_error(tmp_path):
    path = card_path(model_dir=tmp_path, version=VERSION)
    path.parent.mkdir()
    path.write_text("{not json")
    with pytest.raises(ModelCardError, match="not valid JSON"):
        read_card(model_dir=tmp_path, version=VERSION)
    path.write_text(json.dumps({"schema": 99}))
    with pytest.raises(ModelCardError, match="unsupported schema 99"):
        read_card(model_dir=tmp_path, version=VERSION)
    card = build_card(evaluation=_evaluation(), set_name="s", set_path="p", validated_on=date(2025, 1, 2))
    path.write_text(json.dumps({**card, "model_version": "cd" * 32}))
    with pytest.raises(ModelCardError, match="is for model version"):
        read_card(model_dir=tmp_path, version=VERSION)
    with pytest.raises(ModelCardError, match="sha256"):
        card_path(model_dir=tmp_path, version="../../etc/passwd")


def test_reading_cards_does_not_import_tensorflow():
    # The web process shows cards beside every result; it must never pay for importing TensorFlow.
    code = "import sys, inference.model_card; sys.exit('tensorflow' in sys.modules or 'keras' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2]).returncode == 0
