"""Services: every clinical write is validated, audited in the same transaction, all or nothing."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction

from studies.errors import ApplicationError, ConflictError, NotAllowedError, UploadRejected
from studies.models import AuditEvent, ImageStatus, Patient, Radiograph, Review, Study, StudyStatus
from studies.services import (
    patient_create,
    radiographs_add,
    radiographs_requeue,
    review_create,
    study_create,
    study_view_record,
)
from tests.conftest import SHARED_DATA
from tests.factories import (
    PatientFactory,
    RadiographFactory,
    StudyFactory,
    StudyResultFactory,
)

pytestmark = pytest.mark.django_db

WRIST_PNG = SHARED_DATA / "png16" / "1068_1253423501_03_WRI-L2_F010.png"
HAND_JPEG = SHARED_DATA / "jpeg" / "IMG0003301.jpg"
PNG_SIZE = (444, 614)  # width, height of WRIST_PNG


def upload(path, name=None):
    return SimpleUploadedFile(name or path.name, path.read_bytes())


def test_patient_create_writes_the_patient_and_its_audit_event(staff_user):
    patient = patient_create(
        mrn=" 123 ", name="Ada", birth_date=None, sex="F", actor=staff_user, ip="10.0.0.1"
    )
    assert patient.mrn == "123" and patient.created_by == staff_user
    event = AuditEvent.objects.get(action="patient.created")
    assert (event.actor, event.object_id, event.ip_address) == (staff_user, str(patient.pk), "10.0.0.1")


def test_duplicate_mrn_is_refused_with_a_field_error(staff_user):
    PatientFactory(mrn="123")
    with pytest.raises(ApplicationError) as error:
        patient_create(mrn="123", name="Bob", birth_date=None, sex="M", actor=staff_user)
    assert error.value.extra == {"mrn": ["A patient with this MRN already exists."]}
    assert not AuditEvent.objects.exists()


def test_a_failure_after_the_write_rolls_back_the_row_and_its_audit_event(staff_user):
    with pytest.raises(RuntimeError), transaction.atomic():
        patient_create(mrn="9", name="Ada", birth_date=None, sex="F", actor=staff_user)
        assert AuditEvent.objects.filter(action="patient.created").count() == 1
        raise RuntimeError("the request failed later")
    assert not Patient.objects.exists()
    assert not AuditEvent.objects.exists()


def test_study_create_refuses_an_unknown_body_part_naming_the_allowed_ones(staff_user):
    patient = PatientFactory()
    with pytest.raises(ApplicationError) as error:
        study_create(patient=patient, accession_number="A1", body_part="XR_KNEE", actor=staff_user)
    message = error.value.extra["body_part"][0]
    assert "XR_KNEE" in message and "XR_WRIST" in message and "XR_SHOULDER" in message
    assert not Study.objects.exists()


def test_study_create_starts_new_and_is_audited(staff_user):
    study = study_create(
        patient=PatientFactory(), accession_number="A1", body_part="XR_HAND", actor=staff_user
    )
    assert study.status == StudyStatus.NEW
    assert AuditEvent.objects.get(action="study.created").study == study


def test_radiographs_add_stores_files_queues_the_study_and_enqueues_after_commit(
    staff_user, settings, django_capture_on_commit_callbacks
):
    study = StudyFactory()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        images = radiographs_add(
            study=study, files=[upload(WRIST_PNG), upload(HAND_JPEG)], actor=staff_user, ip="10.0.0.2"
        )
    assert len(callbacks) == 1  # one job for the whole request, sent only after the commit
    assert [image.status for image in images] == [ImageStatus.QUEUED, ImageStatus.QUEUED]
    png, jpeg = images
    assert (png.format, png.width, png.height) == ("png", *PNG_SIZE)
    assert jpeg.format == "jpeg" and (jpeg.width, jpeg.height) == (373, 454)
    stored = settings.MEDIA_ROOT / png.file.name
    assert stored.read_bytes() == WRIST_PNG.read_bytes()
    # The uploader's file name (it may hold patient data) never becomes the stored name.
    assert WRIST_PNG.stem not in png.file.name and png.sha256 in png.file.name
    study.refresh_from_db()
    assert study.status == StudyStatus.QUEUED
    assert AuditEvent.objects.filter(action="image.uploaded", study=study).count() == 2


def test_one_bad_file_rejects_the_whole_upload_and_stores_nothing(staff_user, settings):
    study = StudyFactory()
    bad = SimpleUploadedFile("notes.txt", b"not an image at all")
    with pytest.raises(UploadRejected) as error:
        radiographs_add(study=study, files=[upload(WRIST_PNG), bad], actor=staff_user)
    assert list(error.value.reasons) == ["notes.txt"]
    assert not Radiograph.objects.exists()
    assert not AuditEvent.objects.exists()
    assert not [p for p in settings.MEDIA_ROOT.rglob("*") if p.is_file()]
    study.refresh_from_db()
    assert study.status == StudyStatus.NEW


def test_a_database_failure_while_storing_removes_the_files_already_written(
    staff_user, settings, monkeypatch
):
    study = StudyFactory()
    from studies.services import radiographs as module

    def broken_audit(**kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(module, "audit_record", broken_audit)
    with pytest.raises(RuntimeError):
        radiographs_add(study=study, files=[upload(WRIST_PNG)], actor=staff_user)
    assert not Radiograph.objects.exists()
    assert not [p for p in settings.MEDIA_ROOT.rglob("*") if p.is_file()]


def test_the_same_image_twice_in_a_study_is_refused(staff_user):
    study = StudyFactory()
    radiographs_add(study=study, files=[upload(WRIST_PNG)], actor=staff_user)
    with pytest.raises(UploadRejected) as error:
        radiographs_add(study=study, files=[upload(WRIST_PNG, "again.png")], actor=staff_user)
    assert error.value.reasons == {"again.png": "this image is already part of the study"}
    assert study.images.count() == 1


def test_review_confirm_takes_the_model_label_and_marks_the_study_reviewed(radiologist_user):
    result = StudyResultFactory(abnormal_probability=0.9)
    review = review_create(
        study=result.study, radiologist=radiologist_user, decision="confirm", final_label=None, comment=""
    )
    assert (review.final_label, review.model_label, review.model_version) == (
        "abnormal",
        "abnormal",
        "a" * 64,
    )
    result.study.refresh_from_db()
    assert result.study.status == StudyStatus.REVIEWED
    event = AuditEvent.objects.get(action="study.reviewed")
    assert event.study == result.study and event.details["decision"] == "confirm"


def test_override_needs_a_comment_and_a_different_label(radiologist_user):
    result = StudyResultFactory(abnormal_probability=0.9)
    with pytest.raises(ApplicationError) as error:
        review_create(
            study=result.study,
            radiologist=radiologist_user,
            decision="override",
            final_label="normal",
            comment=" ",
        )
    assert "comment" in error.value.extra
    with pytest.raises(ApplicationError) as error:
        review_create(
            study=result.study,
            radiologist=radiologist_user,
            decision="override",
            final_label="abnormal",
            comment="x",
        )
    assert "final_label" in error.value.extra
    assert not Review.objects.exists() and not AuditEvent.objects.exists()


def test_reviews_keep_history_and_the_latest_rules(radiologist_user):
    from studies.selectors import study_detail

    result = StudyResultFactory(abnormal_probability=0.9)
    review_create(study=result.study, radiologist=radiologist_user, decision="confirm", final_label=None)
    review_create(
        study=result.study,
        radiologist=radiologist_user,
        decision="override",
        final_label="normal",
        comment="Old healed fracture, no acute finding.",
    )
    study = study_detail(user=radiologist_user, study_id=result.study.pk)
    assert study.final_label == "normal"
    assert [r.decision for r in study.reviews.all()] == ["override", "confirm"]


def test_review_without_a_result_is_a_conflict(radiologist_user):
    with pytest.raises(ConflictError):
        review_create(
            study=StudyFactory(), radiologist=radiologist_user, decision="confirm", final_label=None
        )


def test_staff_cannot_review(staff_user):
    result = StudyResultFactory()
    with pytest.raises(NotAllowedError):
        review_create(study=result.study, radiologist=staff_user, decision="confirm", final_label=None)


def test_requeue_sends_failed_images_again(staff_user, django_capture_on_commit_callbacks):
    study = StudyFactory(status=StudyStatus.FAILED)
    failed = RadiographFactory(study=study, status=ImageStatus.FAILED, error="Prediction failed: boom")
    done = RadiographFactory(study=study, status=ImageStatus.DONE)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        requeued = radiographs_requeue(study=study, actor=staff_user)
    assert [image.pk for image in requeued] == [failed.pk] and len(callbacks) == 1
    failed.refresh_from_db(), done.refresh_from_db(), study.refresh_from_db()
    assert (failed.status, failed.error, done.status) == (ImageStatus.QUEUED, "", ImageStatus.DONE)
    assert study.status == StudyStatus.QUEUED
    details = AuditEvent.objects.get(action="study.requeued").details
    assert details == {"images": [failed.pk], "stalled": False}
    with pytest.raises(ConflictError):
        radiographs_requeue(study=study, actor=staff_user)


def test_viewing_a_study_is_audited(staff_user):
    study = StudyFactory()
    study_view_record(study=study, actor=staff_user, ip="10.1.1.1")
    event = AuditEvent.objects.get()
    assert (event.action, event.study, event.actor_username) == ("study.viewed", study, "staff")
