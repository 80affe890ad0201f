"""Selectors: worklist priority, filters, role scoping and constant query counts."""

from datetime import timedelta

import pytest
from django.utils import timezone

from studies.models import Study, WorklistRank
from studies.selectors import audit_events, patient_list, study_detail, worklist
from studies.services import study_view_record
from tests.factories import (
    PatientFactory,
    PredictionFactory,
    RadiographFactory,
    ReviewFactory,
    StudyFactory,
    StudyResultFactory,
)

pytestmark = pytest.mark.django_db


def _aged(study: Study, hours: int) -> Study:
    Study.objects.filter(pk=study.pk).update(created_at=timezone.now() - timedelta(hours=hours))
    return study


def test_worklist_order_flagged_unreviewed_first_then_probability_then_oldest(staff_user):
    pending_old = _aged(StudyFactory(), 50)
    pending_new = _aged(StudyFactory(), 1)
    normal = _aged(StudyResultFactory(abnormal_probability=0.3).study, 10)
    flagged_low = _aged(StudyResultFactory(abnormal_probability=0.6).study, 20)
    flagged_high = _aged(StudyResultFactory(abnormal_probability=0.95).study, 5)
    reviewed_abnormal = _aged(StudyResultFactory(abnormal_probability=0.99).study, 30)
    ReviewFactory(study=reviewed_abnormal)
    order = list(worklist(user=staff_user).values_list("pk", flat=True))
    assert order == [
        flagged_high.pk,
        flagged_low.pk,
        reviewed_abnormal.pk,  # abnormal but already read: not flagged, still by probability
        normal.pk,
        pending_old.pk,  # no result yet: oldest first
        pending_new.pk,
    ]
    flags = dict(worklist(user=staff_user).values_list("pk", "is_flagged"))
    assert flags[flagged_high.pk] and not flags[reviewed_abnormal.pk] and not flags[pending_old.pk]


def test_worklist_filters(staff_user):
    flagged = StudyResultFactory(abnormal_probability=0.9).study
    reviewed = ReviewFactory().study
    hand = StudyFactory(body_part="XR_HAND")
    assert list(worklist(user=staff_user, flagged=True)) == [flagged]
    assert list(worklist(user=staff_user, reviewed=True)) == [reviewed]
    assert set(worklist(user=staff_user, reviewed=False)) == {flagged, hand}
    assert list(worklist(user=staff_user, body_part="XR_HAND")) == [hand]
    assert list(worklist(user=staff_user, patient_id=hand.patient_id)) == [hand]
    assert list(worklist(user=staff_user, status="reviewed")) == [reviewed]


def _worklist_rows(user) -> list:
    return [
        (s.patient.name, s.result.label if hasattr(s, "result") else None, s.final_label)
        for s in worklist(user=user)
    ]


@pytest.mark.parametrize("count", [3, 30])
def test_worklist_costs_the_same_queries_whatever_its_length(staff_user, count, django_assert_num_queries):
    for index in range(count):
        study = StudyResultFactory(abnormal_probability=(index % 10) / 10).study
        if index % 3 == 0:
            ReviewFactory(study=study)
    staff_user.groups.all()  # warm nothing: the role check is one query, counted below
    with django_assert_num_queries(2):  # role check + the studies with patient, result, final label
        rows = _worklist_rows(staff_user)
    assert len(rows) == count


@pytest.mark.parametrize("images", [1, 10])
def test_study_detail_costs_a_fixed_number_of_queries(staff_user, images, django_assert_num_queries):
    study = StudyResultFactory().study
    for _ in range(images):
        PredictionFactory(radiograph=RadiographFactory(study=study))
    ReviewFactory(study=study)
    with django_assert_num_queries(5):  # role, study, images, predictions, reviews with radiologist
        loaded = study_detail(user=staff_user, study_id=study.pk)
        rows = [(i.pk, [p.label for p in i.predictions.all()]) for i in loaded.images.all()]
        names = [r.radiologist.username for r in loaded.reviews.all()]
    assert len(rows) == images and len(names) == 1


def test_users_without_a_clinical_role_see_nothing(norole_user):
    StudyFactory()
    PatientFactory()
    assert not worklist(user=norole_user).exists()
    assert not patient_list(user=norole_user).exists()


def test_patient_search_matches_mrn_or_name(staff_user):
    ada = PatientFactory(mrn="X-100", name="Ada Lovelace")
    PatientFactory(mrn="Y-200", name="Charles Babbage")
    assert list(patient_list(user=staff_user, search="lovel")) == [ada]
    assert list(patient_list(user=staff_user, search="x-1")) == [ada]


def test_audit_events_are_for_admins_and_filter(staff_user, admin_user):
    study, other = StudyFactory(), StudyFactory()
    study_view_record(study=study, actor=staff_user, ip=None)
    study_view_record(study=other, actor=admin_user, ip=None)
    assert not audit_events(user=staff_user).exists()
    assert [e.study for e in audit_events(user=admin_user, study=study.pk)] == [study]
    assert [e.study for e in audit_events(user=admin_user, actor="admin")] == [other]
    assert [e.study for e in audit_events(user=admin_user, actor=staff_user.pk)] == [study]
    assert audit_events(user=admin_user, action="study.created").count() == 0


def test_worklist_sort_key_follows_results_and_reviews(radiologist_user):
    """The stored sort key changes with the services that change a result or add a review."""
    from studies.services import review_create

    result = StudyResultFactory(abnormal_probability=0.9)
    study = result.study
    study.refresh_from_db()
    assert (study.worklist_rank, study.worklist_probability) == (WorklistRank.FLAGGED, 0.9)

    review_create(study=study, radiologist=radiologist_user, decision="confirm", final_label=None)
    study.refresh_from_db()
    assert (study.worklist_rank, study.worklist_probability) == (WorklistRank.OTHER, 0.9)
    assert worklist(user=radiologist_user, flagged=False).get() == study
