"""`model_card` beside every result in the API: the validation card of the version that made it."""

import pytest

from tests.factories import (
    ModelVersionFactory,
    PredictionFactory,
    RadiographFactory,
    StudyResultFactory,
    validation_card,
)

pytestmark = pytest.mark.django_db

VALIDATED = "a" * 64
UNVALIDATED = "f" * 64
NOT_VALIDATED = {"validated": False, "notice": "not validated here"}
EXPECTED_CARD = {
    "validated": True,
    "set": "MURA-v1.1 valid",
    "date": "2026-12-02",
    "studies": 1199,
    "threshold": 0.5,
    "kappa": {"value": 0.71, "low": 0.67, "high": 0.75},
    "auroc": {"value": 0.874, "low": 0.853, "high": 0.893},
    "sensitivity": {"value": 0.781, "low": 0.744, "high": 0.814},
    "specificity": {"value": 0.902, "low": 0.877, "high": 0.922},
    "ci": "Sensitivity and specificity: Wilson score interval; AUROC and kappa: stratified bootstrap.",
}


@pytest.fixture
def staff(api_client_for, staff_user):
    return api_client_for(staff_user)


def predicted_study(version: str):
    result = StudyResultFactory(model_version=version)
    image = RadiographFactory(study=result.study)
    PredictionFactory(radiograph=image, model_version=version)
    return result.study, image


def test_a_validated_version_shows_its_card_on_the_study_result_and_each_prediction(staff):
    ModelVersionFactory(version=VALIDATED, card=validation_card(version=VALIDATED))
    study, image = predicted_study(VALIDATED)

    body = staff.get(f"/api/v1/studies/{study.pk}/").json()

    assert body["result"]["model_card"] == EXPECTED_CARD
    assert body["images"][0]["prediction"]["model_card"] == EXPECTED_CARD
    assert staff.get(f"/api/v1/images/{image.pk}/").json()["prediction"]["model_card"] == EXPECTED_CARD
    listed = staff.get("/api/v1/studies/").json()["results"][0]
    assert listed["result"]["model_card"] == EXPECTED_CARD


@pytest.mark.parametrize("recorded", [False, True], ids=["never recorded", "recorded without a card"])
def test_a_version_without_a_card_says_not_validated_here(staff, recorded):
    if recorded:
        ModelVersionFactory(version=UNVALIDATED, card=None)
    study, image = predicted_study(UNVALIDATED)

    body = staff.get(f"/api/v1/studies/{study.pk}/").json()

    assert body["result"]["model_card"] == NOT_VALIDATED
    assert body["images"][0]["prediction"]["model_card"] == NOT_VALIDATED
    assert staff.get(f"/api/v1/images/{image.pk}/").json()["prediction"]["model_card"] == NOT_VALIDATED


def test_each_prediction_carries_the_card_of_its_own_version(staff):
    # A study re-run under a new model version: the older image keeps its older version's card.
    ModelVersionFactory(version=VALIDATED, card=validation_card(version=VALIDATED))
    study, _ = predicted_study(UNVALIDATED)
    PredictionFactory(radiograph=RadiographFactory(study=study), model_version=VALIDATED)

    images = staff.get(f"/api/v1/studies/{study.pk}/").json()["images"]

    assert [image["prediction"]["model_card"]["validated"] for image in images] == [False, True]


@pytest.mark.parametrize("count", [3, 30])
def test_cards_cost_no_extra_query_on_the_study_list(staff, count, django_assert_num_queries):
    for index in range(count):
        version = f"{index:064x}"
        ModelVersionFactory(version=version, card=validation_card(version=version) if index % 2 else None)
        StudyResultFactory(model_version=version)
    with django_assert_num_queries(4):  # token, role, count, page (cards come in the page's query)
        results = staff.get("/api/v1/studies/").json()["results"]
    assert sum(row["result"]["model_card"]["validated"] for row in results) == count // 2


@pytest.mark.parametrize("images", [1, 8])
def test_cards_cost_no_extra_query_on_the_study_detail(staff, images, django_assert_num_queries):
    ModelVersionFactory(version=VALIDATED, card=validation_card(version=VALIDATED))
    study, _ = predicted_study(VALIDATED)
    for _ in range(images - 1):
        PredictionFactory(radiograph=RadiographFactory(study=study), model_version=VALIDATED)
    # token, role, study, images, predictions (with their cards), reviews, PACS sends, the view's
    # audit event: the same count for 1 image as for 8
    with django_assert_num_queries(8):
        body = staff.get(f"/api/v1/studies/{study.pk}/").json()
    assert all(image["prediction"]["model_card"]["validated"] for image in body["images"])


def test_the_schema_describes_model_card_both_ways(staff):
    schema = staff.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    components = schema["components"]["schemas"]
    card_ref = {"$ref": "#/components/schemas/ModelCard"}
    # A read-only reference is wrapped in allOf (OpenAPI 3.0 ignores siblings of $ref).
    prediction_card = components["PredictionOutput"]["properties"]["model_card"]
    assert prediction_card == {"allOf": [card_ref], "readOnly": True}
    assert components["StudyResultOutput"]["properties"]["model_card"] == card_ref
    assert components["ModelCard"]["oneOf"] == [
        {"$ref": "#/components/schemas/ValidatedModelCard"},
        {"$ref": "#/components/schemas/UnvalidatedModelCard"},
    ]
    validated = set(components["ValidatedModelCard"]["properties"])
    assert {"set", "date", "studies", "threshold", "ci"} <= validated
    assert {"kappa", "auroc", "sensitivity", "specificity"} <= validated
    assert components["UnvalidatedModelCard"]["properties"]["notice"]["$ref"]
