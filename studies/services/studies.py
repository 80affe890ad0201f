"""Study writes: registration, the audited view, and re-running failed images."""

import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from studies.audit import audit_record
from studies.errors import ApplicationError, ConflictError
from studies.models import AuditEvent, BodyPart, ImageStatus, Patient, Radiograph, Study, StudyStatus
from studies.selectors_workers import study_stall

DUPLICATE_ACCESSION = "A study with this accession number already exists."


def unknown_body_part_message(value: str) -> str:
    """The error for a body part that is not one of the seven MURA study types."""
    return f"Unknown body part '{value}'. Allowed: {', '.join(BodyPart.values)}."


@transaction.atomic
def study_create(
    *,
    patient: Patient,
    accession_number: str,
    body_part: str,
    study_date: datetime.date | None = None,
    expected_images: int | None = None,
    actor: AbstractBaseUser | None,
    ip: str | None = None,
    study_instance_uid: str = "",
    source: dict | None = None,
    notes: dict | None = None,
) -> Study:
    """Register a study for a patient; it starts `new`, with no images.

    `expected_images`: how many files the uploader chose; until that many arrive (or staff mark
    the study complete) the study says which are missing. `source`: the DICOM sender when the study
    comes from a received file (studies.services.dicom_ingest; audited, no actor); only such a
    study may have a blank body part, and then waits for staff to set one. `notes`: more facts
    for the audit event (e.g. a derived accession number).
    """
    accession_number = (accession_number or "").strip()
    errors: dict[str, list[str]] = {}
    if not accession_number:
        errors["accession_number"] = ["The accession number is required."]
    elif Study.objects.filter(accession_number=accession_number).exists():
        errors["accession_number"] = [DUPLICATE_ACCESSION]
    if body_part not in BodyPart.values and not (source is not None and body_part == ""):
        errors["body_part"] = [unknown_body_part_message(body_part)]
    if expected_images is not None and expected_images < 1:
        errors["expected_images"] = ["The number of expected images must be at least 1."]
    if errors:
        raise ApplicationError("The study could not be registered.", extra=errors)
    try:
        with transaction.atomic():
            study = Study.objects.create(
                patient=patient,
                accession_number=accession_number,
                body_part=body_part,
                study_date=study_date,
                study_instance_uid=study_instance_uid,
                expected_images=expected_images,
                created_by=actor if actor is not None and actor.is_authenticated else None,
            )
    except IntegrityError as exc:
        raise ApplicationError(
            DUPLICATE_ACCESSION, extra={"accession_number": [DUPLICATE_ACCESSION]}
        ) from exc
    details = {
        "accession_number": accession_number,
        "body_part": body_part,
        "patient": patient.pk,
        "expected_images": expected_images,
    }
    if study_instance_uid:
        details["study_instance_uid"] = study_instance_uid
    if source is not None:
        details["source"] = source
    details.update(notes or {})
    audit_record(actor=actor, action="study.created", obj=study, ip=ip, details=details)
    return study


@transaction.atomic
def study_mark_complete(*, study: Study, actor: AbstractBaseUser, ip: str | None = None) -> Study:
    """Staff say the study is complete although fewer images arrived than were chosen.

    The study stops saying "2 of 4 files received"; the event keeps both counts.
    """
    study = Study.objects.select_for_update().get(pk=study.pk)
    received = study.images.count()
    if study.marked_complete_at is not None:
        raise ConflictError("This study has already been marked complete.")
    if study.expected_images is None or received >= study.expected_images:
        raise ConflictError("No file is missing from this study.")
    study.marked_complete_at = timezone.now()
    study.marked_complete_by = actor
    study.save(update_fields=["marked_complete_at", "marked_complete_by", "updated_at"])
    audit_record(
        actor=actor,
        action="study.marked_complete",
        obj=study,
        ip=ip,
        details={"expected_images": study.expected_images, "images_received": received},
    )
    return study


def study_view_record(*, study: Study, actor: AbstractBaseUser, ip: str | None) -> AuditEvent:
    """Record that `actor` opened the study (every view of patient data is audited).

    One event per opening covers everything the page shows: its images, heat maps and the
    viewer's pixel data are not audited one by one (studies.apis._ImageFileBase).
    """
    return audit_record(
        actor=actor,
        action="study.viewed",
        obj=study,
        ip=ip,
        details={"accession_number": study.accession_number},
    )


@transaction.atomic
def radiographs_requeue(*, study: Study, actor: AbstractBaseUser, ip: str | None = None) -> list[Radiograph]:
    """ "Run again": send the study's failed and unsupported images back to the queue, and, when
    its job has stalled (studies.selectors_workers.study_stall), its waiting images too: a claim
    left by a gone worker is dropped."""
    study = Study.objects.select_for_update().get(pk=study.pk)
    rerun = [ImageStatus.FAILED, ImageStatus.UNSUPPORTED]
    stalled = study_stall(study=study) is not None
    if stalled:
        rerun += [ImageStatus.QUEUED, ImageStatus.PROCESSING]
    images = list(study.images.select_for_update().filter(status__in=rerun))
    if not images:
        raise ConflictError("This study has no failed or stalled images to run again.")
    ids = [image.pk for image in images]
    Radiograph.objects.filter(pk__in=ids).update(
        status=ImageStatus.QUEUED, error="", claimed_by="", claimed_worker=""
    )
    study.status = StudyStatus.QUEUED
    study.error = ""
    study.save(update_fields=["status", "error", "updated_at"])
    audit_record(
        actor=actor, action="study.requeued", obj=study, ip=ip, details={"images": ids, "stalled": stalled}
    )
    _enqueue_on_commit(ids)
    for image in images:
        image.status, image.error = ImageStatus.QUEUED, ""
    return images


def _enqueue_on_commit(image_ids: list[int]) -> None:
    # Imported late: the inference bridge is only needed once something is sent.
    from inference.tasks import enqueue_images

    transaction.on_commit(lambda: enqueue_images(image_ids))
