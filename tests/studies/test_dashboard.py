"""Agreement and drift figures shown on the dashboard."""

from datetime import UTC, datetime, timedelta

import pytest

from inference.confidence import bootstrap_intervals
from studies.dashboard import (
    MIN_TO_JUDGE,
    ConfusionMatrix,
    ResultRecord,
    ReviewRecord,
    chart_data,
    cohen_kappa,
    confusion_matrix,
    drift_check,
    kappa_estimate,
    proportion,
    sensitivity,
    specificity,
    summarize,
)

A, N = "abnormal", "normal"
NOW = datetime(2025, 3, 1, 12, tzinfo=UTC)


def test_confusion_matrix_counts_model_label_against_final_label():
    pairs = [(A, A)] * 3 + [(A, N)] * 2 + [(N, A)] + [(N, N)] * 4
    assert confusion_matrix(pairs=pairs) == ConfusionMatrix(
        true_positive=3, false_positive=2, false_negative=1, true_negative=4
    )


def test_sensitivity_specificity_and_kappa_match_hand_computation():
    matrix = ConfusionMatrix(true_positive=20, false_positive=5, false_negative=10, true_negative=15)
    assert sensitivity(matrix=matrix) == pytest.approx(20 / 30)
    assert specificity(matrix=matrix) == pytest.approx(15 / 20)
    # po = 35/50 = 0.7; pe = 0.5*0.6 + 0.5*0.4 = 0.5; kappa = 0.2 / 0.5
    assert cohen_kappa(matrix=matrix) == pytest.approx(0.4)


def test_kappa_is_one_for_perfect_agreement_and_negative_for_systematic_disagreement():
    assert cohen_kappa(matrix=ConfusionMatrix(true_positive=4, true_negative=6)) == pytest.approx(1.0)
    assert cohen_kappa(matrix=ConfusionMatrix(false_positive=5, false_negative=5)) == pytest.approx(-1.0)


def test_undefined_figures_are_none_not_zero():
    empty = ConfusionMatrix()
    assert cohen_kappa(matrix=empty) is None
    assert sensitivity(matrix=empty) is None
    assert specificity(matrix=empty) is None
    # Everyone (model and radiologist) said abnormal: chance agreement is 1, kappa undefined.
    assert cohen_kappa(matrix=ConfusionMatrix(true_positive=7)) is None
    assert specificity(matrix=ConfusionMatrix(true_positive=7)) is None


def test_drift_warns_when_recent_rate_is_far_from_long_run():
    # long run 20 %, last week 60 % of 20 studies: SE = sqrt(.2*.8/20) ≈ 0.089, z ≈ 4.5
    check = drift_check(recent_studies=20, recent_flagged=12, baseline_studies=100, baseline_flagged=20)
    assert check.warning
    assert check.z_score == pytest.approx(0.4 / (0.2 * 0.8 / 20) ** 0.5)


def test_drift_stays_quiet_within_two_standard_errors():
    # 30 % of 20 against 20 %: z ≈ 1.1
    check = drift_check(recent_studies=20, recent_flagged=6, baseline_studies=100, baseline_flagged=20)
    assert not check.warning


def test_drift_needs_ten_studies_on_each_side():
    few_recent = drift_check(recent_studies=9, recent_flagged=9, baseline_studies=100, baseline_flagged=10)
    few_baseline = drift_check(recent_studies=50, recent_flagged=50, baseline_studies=9, baseline_flagged=0)
    assert few_recent.z_score > 2 and not few_recent.warning
    assert not few_baseline.warning


def test_drift_from_a_zero_long_run_rate_still_warns():
    check = drift_check(recent_studies=10, recent_flagged=5, baseline_studies=40, baseline_flagged=0)
    assert check.warning


def _result(body_part, version, label, days_ago, demo=False):
    return ResultRecord(
        body_part=body_part,
        model_name=f"{body_part}.h5",
        model_version=version,
        demo=demo,
        label=label,
        created_at=NOW - timedelta(days=days_ago),
    )


def test_summarize_groups_by_body_part_and_model_version():
    results = (
        [_result("XR_WRIST", "v1", A, 30)] * 4
        + [_result("XR_WRIST", "v1", N, 30)] * 16
        + [_result("XR_WRIST", "v1", A, 1)] * 9
        + [_result("XR_WRIST", "v1", N, 1)] * 1
        + [_result("XR_HAND", "v2", N, 2, demo=True)] * 3
    )
    reviews = [ReviewRecord("XR_WRIST", "v1", A, A), ReviewRecord("XR_WRIST", "v1", A, N)]
    summaries = summarize(results=results, reviews=reviews, now=NOW)
    assert [(s.body_part, s.model_version) for s in summaries] == [("XR_HAND", "v2"), ("XR_WRIST", "v1")]
    hand, wrist = summaries
    assert hand.demo and hand.studies == 3 and hand.flagged_rate == 0 and hand.kappa is None
    assert wrist.studies == 30 and wrist.flagged == 13 and wrist.reviewed == 2
    assert wrist.confusion == ConfusionMatrix(true_positive=1, false_positive=1)
    assert wrist.sensitivity == 1.0 and wrist.specificity == 0.0
    # 90 % flagged this week against 20 % before: a drift warning.
    assert wrist.drift.recent_studies == 10 and wrist.drift.baseline_studies == 20
    assert wrist.drift.warning
    assert not hand.drift.warning


# --- intervals and counts ---------------------------------------------------------------------
def test_a_proportion_carries_wilsons_interval_and_its_count():
    figure = proportion(successes=8, trials=10, noun=("abnormal study", "abnormal studies"))
    assert figure.value == pytest.approx(0.8)
    assert (figure.low, figure.high) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    assert figure.counted == "10 abnormal studies" and figure.caveat == "" and not figure.too_few


def test_a_figure_on_too_few_studies_says_so_and_one_on_none_says_there_is_none():
    two = proportion(successes=1, trials=2, noun=("review", "reviews"))
    assert two.too_few and two.caveat == "only 2 reviews: too few to judge"
    assert proportion(successes=1, trials=1, noun=("review", "reviews")).caveat == (
        "only 1 review: too few to judge"
    )
    none = proportion(successes=0, trials=0, noun=("review", "reviews"))
    assert none.value is None and none.low is None and none.caveat == "no review yet"
    assert not proportion(successes=3, trials=MIN_TO_JUDGE).too_few


def test_kappas_interval_is_the_validation_cards_bootstrap():
    """Counts per cell give the same interval as inference.confidence's per-study bootstrap."""
    matrix = ConfusionMatrix(true_positive=30, false_negative=8, false_positive=6, true_negative=40)
    figure = kappa_estimate(matrix=matrix)
    labels = [True] * 38 + [False] * 46
    scores = [1.0] * 30 + [0.0] * 8 + [1.0] * 6 + [0.0] * 40
    per_study = bootstrap_intervals(labels=labels, scores=scores, threshold=0.5).kappa
    assert figure.value == pytest.approx(cohen_kappa(matrix=matrix))
    assert figure.low == pytest.approx(per_study.low, abs=0.03)
    assert figure.high == pytest.approx(per_study.high, abs=0.03)
    assert figure.low < figure.value < figure.high and figure.n == 84 and figure.counted == "84 reviews"


def test_kappa_without_a_figure_has_no_interval_and_large_counts_stay_fast():
    assert kappa_estimate(matrix=ConfusionMatrix(true_positive=7)).value is None
    assert kappa_estimate(matrix=ConfusionMatrix()).caveat == "no review yet"
    # One review: every resample is the same study, so no interval rather than a zero-width one.
    single = kappa_estimate(matrix=ConfusionMatrix(false_negative=1))
    assert single.value == 0.0 and single.low is None and single.high is None
    assert single.caveat == "only 1 review: too few to judge"
    big = ConfusionMatrix(
        true_positive=40_000, false_negative=9_000, false_positive=7_000, true_negative=44_000
    )
    started = datetime.now()
    figure = kappa_estimate(matrix=big)
    assert (datetime.now() - started).total_seconds() < 1.0
    assert figure.high - figure.low < 0.02


def test_summaries_carry_every_rate_with_its_interval_and_the_charts_the_demo_marker():
    results = [_result("XR_WRIST", "v1", A, 30)] * 6 + [_result("XR_WRIST", "v1", N, 1)] * 4
    results += [_result("XR_HAND", "v2", N, 2, demo=True)] * 3
    reviews = [ReviewRecord("XR_WRIST", "v1", A, A)] * 5 + [ReviewRecord("XR_WRIST", "v1", N, A)]
    hand, wrist = summarize(results=results, reviews=reviews, now=NOW)
    assert set(wrist.figures) == {
        "flagged_rate",
        "recent_rate",
        "baseline_rate",
        "kappa",
        "sensitivity",
        "specificity",
    }
    assert (
        wrist.figures["flagged_rate"].counted == "10 studies" and wrist.figures["flagged_rate"].successes == 6
    )
    assert wrist.figures["recent_rate"].n == 4 and wrist.figures["baseline_rate"].n == 6
    assert wrist.figures["sensitivity"].value == pytest.approx(5 / 6)
    assert wrist.figures["sensitivity"].counted == "6 abnormal studies"
    assert wrist.figures["specificity"].caveat == "no normal study yet"
    chart = chart_data(summaries=[hand, wrist], body_part_names={"XR_HAND": "Hand", "XR_WRIST": "Wrist"})
    assert chart["demo"] is True and chart["labels"] == ["Hand · v2 (demo)", "Wrist · v1"]
    assert chart["sensitivity"][1]["counted"] == "6 abnormal studies"
    assert chart["sensitivity"][1]["caveat"] == "only 6 abnormal studies: too few to judge"
    assert chart_data(summaries=[wrist], body_part_names={})["demo"] is False
