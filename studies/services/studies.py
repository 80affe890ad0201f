"""Study writes: registration, the audited view, and re-running failed images."""

import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction

from studies.audit import audit_record
from studies.errors import ApplicationError, ConflictError
from studies.models import AuditEvent, BodyPart, ImageStatus, Patient, Radiograph, Study, StudyStatus

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
    actor: AbstractBaseUser,
    ip: str | None = None,
) -> Study:
    """Register a study for a patient; it starts `new`, with no images."""
    accession_number = (accession_number or "").strip()
    errors: dict[str, list[str]] = {}
    if not accession_number:
        errors["accession_number"] = ["The accession number is required."]
    elif Study.objects.filter(accession_number=accession_number).exists():
        errors["accession_number"] = [DUPLICATE_ACCESSION]
    if body_part not in BodyPart.values:
        errors["body_part"] = [unknown_body_part_message(body_part)]
    if errors:
        raise ApplicationError("The study could not be registered.", extra=errors)
    try:
        with transaction.atomic():
            study = Study.objects.create(
                patient=patient,
                accession_number=accession_number,
                body_part=body_part,
                study_date=study_date,
                created_by=actor,
            )
    except IntegrityError as exc:
        raise ApplicationError(
            DUPLICATE_ACCESSION, extra={"accession_number": [DUPLICATE_ACCESSION]}
        ) from exc
    audit_record(
        actor=actor,
        action="study.created",
        obj=study,
        ip=ip,
        details={"accession_number": accession_number, "body_part": body_part, "patient": patient.pk},
    )
    return study


def study_view_record(*, study: Study, actor: AbstractBaseUser, ip: str | None) -> AuditEvent:
    """Record that `actor` opened the study (every view of patient data is audited)."""
    return audit_record(actor=actor, action="study.viewed", obj=study, ip=ip)


@transaction.atomic
def radiographs_requeue(*, study: Study, actor: AbstractBaseUser, ip: str | None = None) -> list[Radiograph]:
    """ "Run again": send the study's failed and unsupported images back to the queue."""
    study = Study.objects.select_for_update().get(pk=study.pk)
    images = list(
        study.images.select_for_update().filter(status__in=[ImageStatus.FAILED, ImageStatus.UNSUPPORTED])
    )
    if not images:
        raise ConflictError("This study has no failed images to run again.")
    ids = [image.pk for image in images]
    Radiograph.objects.filter(pk__in=ids).update(status=ImageStatus.QUEUED, error="")
    study.status = StudyStatus.QUEUED
    study.error = ""
    study.save(update_fields=["status", "error", "updated_at"])
    audit_record(actor=actor, action="study.requeued", obj=study, ip=ip, details={"images": ids})
    _enqueue_on_commit(ids)
    for image in images:
        image.status, image.error = ImageStatus.QUEUED, ""
    return images


def _enqueue_on_commit(image_ids: list[int]) -> None:
    # Imported late: the inference bridge is only needed once something is sent.
    from inference.tasks import enqueue_images

    transaction.on_commit(lambda: enqueue_images(image_ids))
