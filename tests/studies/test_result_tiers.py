"""Three-tier results (issue 10, point 3): abnormal, normal, or indeterminate inside the model's band.

Stored with the band they were made with, ranked right after the flagged studies until a radiologist
rules, never flagged, ruled on (not confirmed or overridden), and counted per tier on the dashboard.
"""

import datetime
import re

import pytest
from django.urls import reverse
from django.utils import timezone

from inference.registry import result_label as inference_result_label
from studies.dashboard import ResultRecord, ReviewRecord, summarize, tier_totals
from studies.errors import ApplicationError
from studies.models import ImageStatus, Review, Study, WorklistRank
from studies.selectors import worklist
from studies.services import review_create
from studies.services.predictions import ImageOutcome, ModelRun, predictions_record, result_label
from tests.factories import (
    PredictionFactory,
    RadiographFactory,
    ReviewFactory,
    StudyFactory,
    StudyResultFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

BAND = (0.35, 0.65)
VERSION = "b" * 64


def _run(*, indeterminate=BAND) -> ModelRun:
    return ModelRun(
        model_name="demo-wrist",
        body_part="XR_WRIST",
        model_version=VERSION,
        threshold=0.5,
        demo=True,
        preprocessing="seed",
        preprocess_ms=1.0,
        inference_ms=2.0,
        indeterminate=indeterminate,
    )


def _aged(study: Study, hours: int) -> Study:
    Study.objects.filter(pk=study.pk).update(created_at=timezone.now() - datetime.timedelta(hours=hours))
    return study


# --- the rule ----------------------------------------------------------------------------------
@pytest.mark.parametrize("band", [None, BAND, (0.5, 0.9), (0.0, 0.5), (0.2, 1.0)])
@pytest.mark.parametrize(
    "probability", [0.0, 0.2, 0.3499999, 0.35, 0.4999999, 0.5, 0.6499999, 0.65, 0.8999999, 0.9, 1.0]
)
def test_the_web_side_and_the_worker_apply_the_same_rule(probability, band):
    """studies repeats inference's rule (it does not import inference): they must agree at every edge."""
    assert result_label(probability, threshold=0.5, indeterminate=band) == inference_result_label(
        probability, threshold=0.5, indeterminate=band
    )


# --- storing a result ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("probabilities", "band", "label", "rank"),
    [
        ((0.3, 0.6), BAND, "indeterminate", WorklistRank.INDETERMINATE),  # mean 0.45: inside
        ((0.3, 0.6), None, "normal", WorklistRank.OTHER),  # the same study without a band
        ((0.65, 0.65), BAND, "abnormal", WorklistRank.FLAGGED),  # the band's top is abnormal
        ((0.6, 0.7), None, "abnormal", WorklistRank.FLAGGED),
        ((0.35, 0.35), BAND, "indeterminate", WorklistRank.INDETERMINATE),  # the bottom is in the band
        ((0.3, 0.39), BAND, "normal", WorklistRank.OTHER),
    ],
)
def test_a_study_result_gets_its_tier_and_keeps_the_band(probabilities, band, label, rank):
    study = StudyFactory(status=Study.Status.PROCESSING)
    images = [RadiographFactory(study=study, status=ImageStatus.PROCESSING) for _ in probabilities]
    spec_rule = {"threshold": 0.5, "indeterminate": band}
    result = predictions_record(
        study_id=study.pk,
        run=_run(indeterminate=band),
        outcomes=[
            ImageOutcome(radiograph_id=image.pk, abnormal_probability=p, label=result_label(p, **spec_rule))
            for image, p in zip(images, probabilities, strict=True)
        ],
    )
    assert result.label == label
    assert (result.indeterminate_low, result.indeterminate_high) == (band or (None, None))
    predictions = [image.predictions.get() for image in images]
    assert [p.label for p in predictions] == [result_label(p, **spec_rule) for p in probabilities]
    assert {(p.indeterminate_low, p.indeterminate_high) for p in predictions} == {band or (None, None)}
    study.refresh_from_db()
    assert study.worklist_rank == rank
    annotated = worklist(user=UserFactory(role="staff")).get(pk=study.pk)
    assert annotated.is_flagged is (label == "abnormal")
    assert annotated.awaits_read is (label == "indeterminate")


# --- the worklist -------------------------------------------------------------------------------
def test_worklist_flagged_first_then_indeterminate_then_the_rest_as_before(staff_user, api_client_for):
    no_result = _aged(StudyFactory(), 50)
    normal = _aged(StudyResultFactory(abnormal_probability=0.2, indeterminate=BAND).study, 10)
    unbanded_abnormal = _aged(StudyResultFactory(abnormal_probability=0.55).study, 3)
    flagged_high = _aged(StudyResultFactory(abnormal_probability=0.95, indeterminate=BAND).study, 5)
    indeterminate_low = _aged(StudyResultFactory(abnormal_probability=0.4, indeterminate=BAND).study, 40)
    indeterminate_high = _aged(StudyResultFactory(abnormal_probability=0.6, indeterminate=BAND).study, 2)
    indeterminate_old = _aged(StudyResultFactory(abnormal_probability=0.4, indeterminate=BAND).study, 60)
    ruled = _aged(StudyResultFactory(abnormal_probability=0.62, indeterminate=BAND).study, 30)
    ReviewFactory(study=ruled, model_label="indeterminate", final_label="normal")
    expected = [
        flagged_high.pk,
        unbanded_abnormal.pk,  # a model without a band still flags at its threshold
        indeterminate_high.pk,  # then indeterminate awaiting a read, highest P first, then oldest
        indeterminate_old.pk,
        indeterminate_low.pk,
        ruled.pk,  # a radiologist has ruled: back among the rest, by probability
        normal.pk,
        no_result.pk,
    ]
    assert list(worklist(user=staff_user).values_list("pk", flat=True)) == expected
    api = api_client_for(staff_user).get("/api/v1/studies/").json()
    assert [row["id"] for row in api["results"]] == expected
    flagged = api_client_for(staff_user).get("/api/v1/studies/?flagged=true").json()
    assert [row["id"] for row in flagged["results"]] == [flagged_high.pk, unbanded_abnormal.pk]


@pytest.mark.parametrize("count", [3, 30])
def test_the_worklist_page_costs_the_same_queries_with_indeterminate_studies(
    client, django_assert_num_queries, count
):
    for index in range(count):
        result = StudyResultFactory(abnormal_probability=(index % 10) / 10, indeterminate=BAND)
        RadiographFactory(study=result.study)
        if index % 3 == 0 and result.label == "indeterminate":
            ReviewFactory(study=result.study, model_label="indeterminate", final_label="abnormal")
    client.force_login(UserFactory(role="staff"))
    with django_assert_num_queries(8):  # as tests/studies/test_views_worklist.py: no query per row
        response = client.get(reverse("worklist"))
    assert response.status_code == 200


def test_the_worklist_marks_indeterminate_rows_without_the_flag(client):
    indeterminate = StudyResultFactory(abnormal_probability=0.5, indeterminate=BAND).study
    flagged = StudyResultFactory(abnormal_probability=0.9, indeterminate=BAND).study
    client.force_login(UserFactory(role="staff"))
    html = client.get(reverse("worklist")).content.decode()
    row = (
        html.split(f'data-study-id="{indeterminate.pk}"')[0].rsplit("<tr", 1)[1]
        + html.split(f'data-study-id="{indeterminate.pk}"')[1].split("</tr>")[0]
    )
    assert 'class="row-indeterminate"' in row and 'data-result="indeterminate"' in row
    assert 'data-flag="indeterminate"' in row and "Needs a read" in row
    assert "Flagged" not in row and "is-abnormal" not in row and "text-bg-danger" not in row
    assert "band 35\N{EN DASH}65 %" in row and "50.0 %" in row and "Indeterminate: no call" in row
    flagged_row = html.split(f'data-study-id="{flagged.pk}"')[1].split("</tr>")[0]
    assert 'data-flag="flagged"' in flagged_row
    assert html.index(f'data-study-id="{flagged.pk}"') < html.index(f'data-study-id="{indeterminate.pk}"')


# --- API and study page --------------------------------------------------------------------------
def test_the_api_gives_the_tier_and_the_band(api_client_for, staff_user):
    result = StudyResultFactory(abnormal_probability=0.47, indeterminate=BAND, model_version=VERSION)
    PredictionFactory(
        radiograph__study=result.study, abnormal_probability=0.47, indeterminate=BAND, model_version=VERSION
    )
    unbanded = StudyResultFactory(abnormal_probability=0.47)
    client = api_client_for(staff_user)

    detail = client.get(f"/api/v1/studies/{result.study.pk}/").json()
    assert detail["result"]["label"] == "indeterminate"
    assert detail["result"]["indeterminate"] == {"low": 0.35, "high": 0.65}
    assert detail["result"]["flagged"] is False and detail["result"]["threshold"] == 0.5
    prediction = detail["images"][0]["prediction"]
    assert prediction["label"] == "indeterminate"
    assert prediction["indeterminate"] == {"low": 0.35, "high": 0.65}
    plain = client.get(f"/api/v1/studies/{unbanded.study.pk}/").json()["result"]
    assert (plain["label"], plain["indeterminate"]) == ("normal", None)
    schema = client.get("/api/v1/schema/?format=json").json()
    result_schema = schema["components"]["schemas"]["StudyResultOutput"]
    assert "indeterminate" in result_schema["properties"]


def test_the_study_page_says_indeterminate_needs_a_read_and_shows_the_band(client):
    result = StudyResultFactory(abnormal_probability=0.47, indeterminate=BAND)
    PredictionFactory(radiograph__study=result.study, abnormal_probability=0.47, indeterminate=BAND)
    client.force_login(UserFactory(role="staff"))
    html = client.get(reverse("study_detail", args=[result.study.pk])).content.decode()
    result_card = html.split('id="result-heading"')[1].split("Images (")[0]
    assert "Indeterminate — needs a radiologist" in result_card
    assert "lies in this model's indeterminate band (35 % to 65 %)" in result_card
    assert "band 35\N{EN DASH}65 %" in result_card and "47.0 %" in result_card
    assert "waiting for a radiologist" in result_card
    assert "text-bg-danger" not in result_card and "is-abnormal" not in result_card
    assert "Indeterminate: no call" in html.split("Images (")[1]  # the image's own tier


def test_a_model_without_a_band_says_so_on_the_study_page(client):
    result = StudyResultFactory(abnormal_probability=0.7)
    client.force_login(UserFactory(role="staff"))
    html = client.get(reverse("study_detail", args=[result.study.pk])).content.decode()
    assert "this model has no indeterminate band" in html
    assert "band " not in html.split('data-testid="study-probability"')[1].split("</dd>")[0]


# --- reviews ------------------------------------------------------------------------------------
def test_an_indeterminate_result_is_ruled_on_never_confirmed_or_overridden(radiologist_user):
    study = StudyResultFactory(abnormal_probability=0.5, indeterminate=BAND).study
    with pytest.raises(ApplicationError, match="nothing to confirm or override"):
        review_create(study=study, radiologist=radiologist_user, decision="confirm", final_label=None)
    with pytest.raises(ApplicationError, match="nothing to confirm or override"):
        review_create(
            study=study, radiologist=radiologist_user, decision="override", final_label="normal", comment="x"
        )
    with pytest.raises(ApplicationError, match="needs the final label"):
        review_create(study=study, radiologist=radiologist_user, decision="rule", final_label=None)
    review = review_create(study=study, radiologist=radiologist_user, decision="rule", final_label="abnormal")
    assert (review.decision, review.model_label, review.final_label) == ("rule", "indeterminate", "abnormal")
    study.refresh_from_db()
    assert (study.status, study.worklist_rank) == ("reviewed", WorklistRank.OTHER)

    called = StudyResultFactory(abnormal_probability=0.9, indeterminate=BAND).study
    with pytest.raises(ApplicationError, match="confirm or override it"):
        review_create(study=called, radiologist=radiologist_user, decision="rule", final_label="normal")
    assert Review.objects.count() == 1


def test_rulings_through_the_api_and_the_page(api_client_for, radiologist_user, client):
    study = StudyResultFactory(abnormal_probability=0.5, indeterminate=BAND).study
    api = api_client_for(radiologist_user)
    url = f"/api/v1/studies/{study.pk}/reviews/"
    refused = api.post(url, {"decision": "confirm"})
    assert refused.status_code == 400 and "rule" in str(refused.json()["decision"])
    ruled = api.post(url, {"decision": "rule", "final_label": "normal"})
    assert ruled.status_code == 201
    assert (ruled.json()["decision"], ruled.json()["model_label"]) == ("rule", "indeterminate")

    other = StudyResultFactory(abnormal_probability=0.4, indeterminate=BAND).study
    client.force_login(radiologist_user)
    page = client.get(reverse("study_detail", args=[other.pk])).content.decode()
    assert "there is nothing to confirm or override" in page and 'value="rule"' in page
    assert 'value="confirm"' not in page
    missing = client.post(reverse("study_review", args=[other.pk]), {"decision": "rule"})
    assert missing.status_code == 400 and "Choose your reading" in missing.content.decode()
    done = client.post(
        reverse("study_review", args=[other.pk]), {"decision": "rule", "final_label": "abnormal"}
    )
    assert done.status_code == 302
    history = client.get(reverse("study_detail", args=[other.pk])).content.decode()
    assert "Ruling</strong> → final label <strong>Abnormal" in history


# --- dashboard ----------------------------------------------------------------------------------
def _tiered_results() -> None:
    """10 wrist results: 4 abnormal (2 reviewed: 1 confirmed), 3 indeterminate (2 ruled: 1 each way),
    3 normal (1 reviewed, confirmed)."""
    abnormal = [StudyResultFactory(abnormal_probability=0.8, indeterminate=BAND) for _ in range(4)]
    indeterminate = [StudyResultFactory(abnormal_probability=0.5, indeterminate=BAND) for _ in range(3)]
    normal = [StudyResultFactory(abnormal_probability=0.1, indeterminate=BAND) for _ in range(3)]
    ReviewFactory(study=abnormal[0].study, model_label="abnormal", final_label="abnormal")
    ReviewFactory(
        study=abnormal[1].study,
        decision="override",
        model_label="abnormal",
        final_label="normal",
        comment="x",
    )
    ReviewFactory(study=indeterminate[0].study, model_label="indeterminate", final_label="abnormal")
    ReviewFactory(study=indeterminate[1].study, model_label="indeterminate", final_label="normal")
    ReviewFactory(study=normal[0].study, model_label="normal", final_label="normal")


def test_dashboard_reports_each_tier_and_how_radiologists_ruled(client):
    _tiered_results()
    client.force_login(UserFactory(role="staff"))
    html = client.get(reverse("dashboard")).content.decode()
    table = html.split('data-testid="tier-table"')[1].split("</table>")[0]
    row = table.split('data-tier-row="XR_WRIST"')[1].split("</tr>")[0]
    cells = {
        tier: " ".join(re.sub(r"<[^>]+>", "", row.split(f'data-tier="{tier}">')[1].split("</td>")[0]).split())
        for tier in TIER_NAMES
    }
    # Each share and each agreement with its Wilson 95 % interval and the count behind it.
    assert cells["abnormal"].startswith("40.0 % (95 % CI 16.8\N{EN DASH}68.7 %), 4 of 10 studies")
    assert "radiologist confirmed 50.0 % (95 % CI 9.5\N{EN DASH}90.5 %), 1 of 2 reviews" in cells["abnormal"]
    assert "only 2 reviews: too few to judge" in cells["abnormal"]
    assert cells["indeterminate"].startswith("30.0 % (95 % CI 10.8\N{EN DASH}60.3 %), 3 of 10 studies")
    assert "ruled Abnormal 50.0 % (95 % CI 9.5\N{EN DASH}90.5 %), 1 of 2 rulings" in cells["indeterminate"]
    assert "ruled Normal 50.0 % (95 % CI 9.5\N{EN DASH}90.5 %), 1 of 2 rulings" in cells["indeterminate"]
    assert "radiologist confirmed 100.0 % (95 % CI 20.7\N{EN DASH}100.0 %), 1 of 1 review" in cells["normal"]
    total = table.split('data-tier-row="all"')[1]
    assert "4 of 10 studies" in total and "3 of 10 studies" in total
    # Agreement figures count calls only: 3 of the 5 reviews; the indeterminate rulings are not calls.
    figures = html.split('data-testid="dashboard-table"')[1]
    assert "5 <span" in figures and "(3 calls)" in figures


TIER_NAMES = ("abnormal", "indeterminate", "normal")


def test_summarize_leaves_indeterminate_out_of_the_confusion_matrix():
    now = datetime.datetime(2025, 3, 1, tzinfo=datetime.UTC)
    results = [
        ResultRecord(body_part="XR_WRIST", model_name="m", model_version=VERSION, demo=False, label=label,
                     created_at=now)
        for label in ["abnormal"] * 2 + ["indeterminate"] * 2 + ["normal"]
    ]  # fmt: skip
    reviews = [
        ReviewRecord(body_part="XR_WRIST", model_version=VERSION, model_label=model, final_label=final)
        for model, final in [("abnormal", "abnormal"), ("indeterminate", "abnormal"), ("normal", "abnormal")]
    ]
    (group,) = summarize(results=results, reviews=reviews, now=now)
    assert (group.reviewed, group.calls_reviewed) == (3, 2)
    assert (group.confusion.true_positive, group.confusion.false_negative, group.confusion.total) == (1, 1, 2)
    assert group.flagged == 2  # indeterminate is never flagged
    tiers = {tier.tier: tier for tier in group.tiers}
    assert (tiers["indeterminate"].studies, tiers["indeterminate"].share) == (2, 0.4)
    assert (tiers["indeterminate"].reviewed, tiers["indeterminate"].ruled_abnormal_rate) == (1, 1.0)
    assert tiers["indeterminate"].agreement is None  # no call to agree with
    assert (tiers["normal"].agreement, tiers["normal"].reviewed) == (0.0, 1)
    assert [t.studies for t in tier_totals(results=results, reviews=reviews)] == [2, 2, 1]
