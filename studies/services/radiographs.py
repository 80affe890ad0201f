"""Radiograph writes: validated, all-or-nothing uploads.

Every file is decoded, screened (a colour photograph or a screenshot is refused) and, for DICOM,
its header is checked against the study (studies.intake) before anything is stored. A header
mismatch refuses the file unless the uploader confirmed it with a reason; then it is stored on
the radiograph, audited and shown as a warning.

The DICOM receivers (studies.services.dicom_ingest) end in the same checks and the same store,
one instance at a time, through `inspect_decoded` and `store_accepted`.
"""

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction

from studies.audit import audit_record
from studies.errors import ApplicationError, UploadRejected
from studies.intake import Mismatch, header_mismatches, header_of
from studies.models import AuditEvent, ImageFormat, ImageStatus, Radiograph, Study, StudyStatus
from studies.services.studies import _enqueue_on_commit

if TYPE_CHECKING:
    from inference.decoding import DecodedImage

CONFIRM_HINT = "If this really is the right file, upload it again with the mismatch confirmed and a reason."
MISSING_REASON = "Give the reason why the file is right despite the mismatch."


@dataclass(frozen=True)
class Accepted:
    """A file that passed every check, ready to store."""

    name: str
    data: bytes
    sha256: str
    format: str
    width: int
    height: int
    header: dict[str, str]
    mismatches: tuple[Mismatch, ...] = ()
    sop_instance_uid: str = ""


@dataclass(frozen=True)
class Refused:
    """A file refused after decoding: the reason, and its mismatches when only its header disagrees."""

    reason: str
    mismatches: tuple[Mismatch, ...] = ()
    header: dict[str, str] | None = None


def _display_name(upload: UploadedFile, index: int, taken: set[str]) -> str:
    name = os.path.basename(upload.name or "") or f"file {index + 1}"
    unique, n = name, 2
    while unique in taken:
        unique, n = f"{name} ({n})", n + 1
    taken.add(unique)
    return unique


def size_refusal(size: int | None) -> str | None:
    """Why a file of `size` bytes is refused before it is read (MSKDETECT_MAX_UPLOAD_BYTES), or None."""
    max_bytes = settings.MSKDETECT_MAX_UPLOAD_BYTES
    if size is not None and size > max_bytes:
        return f"the file is larger than the {max_bytes // (1024 * 1024)} MB limit"
    return None


def first_dicom_header(study: Study) -> dict[str, str] | None:
    """The header of the study's first stored DICOM file (later files are compared with it)."""
    first = (
        study.images.filter(format=ImageFormat.DICOM).order_by("id").values_list("dicom_header", flat=True)
    )
    return next(iter(first[:1]), None)


def inspect_decoded(
    *,
    name: str,
    data: bytes,
    decoded: "DecodedImage",
    study: Study,
    seen: set[str],
    first_header: dict[str, str] | None,
    confirm_mismatch: bool,
) -> Accepted | Refused:
    """The checks after decoding: not already in the study (by content), and, for DICOM, the header
    against the study, its patient and its first DICOM file (studies.intake). Adds the file's
    sha256 to `seen` when it is new."""
    digest = hashlib.sha256(data).hexdigest()
    if digest in seen:
        return Refused("this image is already part of the study")
    seen.add(digest)
    header = header_of(decoded.metadata) if decoded.format == ImageFormat.DICOM else {}
    mismatches = (
        header_mismatches(header=header, study=study, patient=study.patient, first_header=first_header)
        if header
        else []
    )
    if mismatches and not confirm_mismatch:
        return Refused("; ".join(m.message for m in mismatches), tuple(mismatches), header)
    return Accepted(
        name,
        data,
        digest,
        decoded.format,
        int(decoded.width),
        int(decoded.height),
        header,
        tuple(mismatches),
    )


def _inspect_all(
    *, study: Study, files: Sequence[UploadedFile], confirm_mismatch: bool
) -> tuple[list[Accepted], dict[str, str], dict[str, list[dict]]]:
    """Decode and check every upload before anything is stored.

    Returns the good files, name → reason for the refused ones, and name → mismatches for the
    files refused only because their header disagrees (confirmable).
    """
    from inference.decoding import DecodeError
    from inference.tasks import screen_upload

    accepted: list[Accepted] = []
    reasons: dict[str, str] = {}
    confirmable: dict[str, list[dict]] = {}
    names: set[str] = set()
    seen: set[str] = set(study.images.values_list("sha256", flat=True))
    first_header = first_dicom_header(study)
    for index, upload in enumerate(files):
        name = _display_name(upload, index, names)
        too_large = size_refusal(upload.size)
        if too_large:
            reasons[name] = too_large
            continue
        upload.seek(0)
        data = upload.read()
        try:
            decoded = screen_upload(data)
        except DecodeError as exc:
            reasons[name] = getattr(exc, "message", None) or str(exc)
            continue
        outcome = inspect_decoded(
            name=name,
            data=data,
            decoded=decoded,
            study=study,
            seen=seen,
            first_header=first_header,
            confirm_mismatch=confirm_mismatch,
        )
        # Later files are compared with the first DICOM header seen, even a refused one's.
        if outcome.header and first_header is None:
            first_header = outcome.header
        if isinstance(outcome, Refused):
            if outcome.mismatches:
                reasons[name] = f"{outcome.reason}. {CONFIRM_HINT}"
                confirmable[name] = [m.as_dict() for m in outcome.mismatches]
            else:
                reasons[name] = outcome.reason
            continue
        accepted.append(outcome)
    # A file refused for another reason than a mismatch cannot be confirmed into the study.
    return accepted, reasons, confirmable


def radiographs_add(
    *,
    study: Study,
    files: Sequence[UploadedFile],
    actor: AbstractBaseUser,
    ip: str | None = None,
    confirm_mismatch: bool = False,
    mismatch_reason: str = "",
) -> list[Radiograph]:
    """Store every file as a queued radiograph of the study and send them to the worker.

    Every file is decoded and checked first; if any is unusable, UploadRejected names each bad
    file and nothing is stored (no rows, no files). A DICOM header that disagrees with the study
    (studies.intake) refuses its file unless `confirm_mismatch` is set with a `mismatch_reason`:
    then the mismatch, the reason and the actor are stored on the radiograph and audited.
    Sending happens after the commit.
    """
    if not files:
        raise ApplicationError("Choose at least one image file.", extra={"file": ["No file was submitted."]})
    mismatch_reason = (mismatch_reason or "").strip()
    if confirm_mismatch and not mismatch_reason:
        raise ApplicationError(MISSING_REASON, extra={"mismatch_reason": [MISSING_REASON]})
    accepted, reasons, confirmable = _inspect_all(study=study, files=files, confirm_mismatch=confirm_mismatch)
    if reasons:
        # Only offer confirmation when every refusal is a mismatch: anything else must be fixed first.
        raise UploadRejected(reasons, mismatches=confirmable if set(confirmable) == set(reasons) else None)

    return store_accepted(study=study, accepted=accepted, actor=actor, ip=ip, mismatch_reason=mismatch_reason)


def store_accepted(
    *,
    study: Study,
    accepted: Sequence[Accepted],
    actor: AbstractBaseUser | None,
    ip: str | None,
    mismatch_reason: str = "",
    action: str = "image.uploaded",
    source: dict[str, Any] | None = None,
) -> list[Radiograph]:
    """Store checked files as radiographs of the study, audited as `action`, and send them to the
    worker after the commit; joins the caller's transaction when there is one.

    While the study has no body part (received by DICOM, not recognised), the images wait
    (`needs_body_part`) and nothing is sent. `source`: the DICOM sender, added to the audit details.
    """
    stored: list[str] = []
    try:
        return _store(
            study=study,
            accepted=accepted,
            actor=actor,
            ip=ip,
            stored=stored,
            mismatch_reason=mismatch_reason,
            action=action,
            source=source,
        )
    except BaseException:
        # Files are written before the rows commit; a rolled-back request must leave none behind.
        for name in stored:
            Radiograph._meta.get_field("file").storage.delete(name)
        raise


@transaction.atomic
def _store(
    *,
    study: Study,
    accepted: Sequence[Accepted],
    actor: AbstractBaseUser | None,
    ip: str | None,
    stored: list[str],
    mismatch_reason: str,
    action: str,
    source: dict[str, Any] | None,
) -> list[Radiograph]:
    study = Study.objects.select_for_update().get(pk=study.pk)
    waiting_for_body_part = not study.body_part
    confirmer = actor if actor is not None and actor.is_authenticated else None
    images: list[Radiograph] = []
    for item in accepted:
        mismatches = [m.as_dict() for m in item.mismatches]
        image = Radiograph(
            study=study,
            sha256=item.sha256,
            original_name=item.name[:255],
            format=item.format,
            width=item.width,
            height=item.height,
            status=ImageStatus.NEEDS_BODY_PART if waiting_for_body_part else ImageStatus.QUEUED,
            dicom_header=item.header,
            mismatches=mismatches,
            mismatch_reason=mismatch_reason if mismatches else "",
            mismatch_confirmed_by=confirmer if mismatches else None,
            sop_instance_uid=item.sop_instance_uid,
        )
        image.file.save(f"{item.sha256}.{item.format}", ContentFile(item.data), save=False)
        stored.append(image.file.name)
        image.save()
        images.append(image)
        details: dict[str, Any] = {
            "sha256": item.sha256,
            "format": item.format,
            "width": item.width,
            "height": item.height,
            "bytes": len(item.data),
        }
        if item.sop_instance_uid:
            details["sop_instance_uid"] = item.sop_instance_uid
        if waiting_for_body_part:
            details["waiting_for_body_part"] = True
        if source is not None:
            details["source"] = source
        audit_record(actor=actor, action=action, obj=image, study=study, ip=ip, details=details)
        if mismatches:
            audit_record(
                actor=actor,
                action="image.mismatch_confirmed",
                obj=image,
                study=study,
                ip=ip,
                details={"mismatches": mismatches, "reason": mismatch_reason},
            )
    if waiting_for_body_part:
        study.status = StudyStatus.NEEDS_BODY_PART
        study.save(update_fields=["status", "updated_at"])
        return images
    study.status = StudyStatus.QUEUED
    study.error = ""
    study.save(update_fields=["status", "error", "updated_at"])
    _enqueue_on_commit([image.pk for image in images])
    return images


def radiograph_view_record(
    *, image: Radiograph, actor: AbstractBaseUser, ip: str | None, part: str
) -> AuditEvent:
    """Record that `actor` fetched an image's pixels (`part`: file, preview or heatmap)."""
    return audit_record(
        actor=actor, action="image.viewed", obj=image, study=image.study, ip=ip, details={"part": part}
    )
