"""Radiograph writes: validated, all-or-nothing uploads."""

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction

from studies.audit import audit_record
from studies.errors import ApplicationError, UploadRejected
from studies.models import AuditEvent, ImageStatus, Radiograph, Study, StudyStatus
from studies.services.studies import _enqueue_on_commit


@dataclass(frozen=True)
class _Accepted:
    name: str
    data: bytes
    sha256: str
    format: str
    width: int
    height: int


def _display_name(upload: UploadedFile, index: int, taken: set[str]) -> str:
    name = os.path.basename(upload.name or "") or f"file {index + 1}"
    unique, n = name, 2
    while unique in taken:
        unique, n = f"{name} ({n})", n + 1
    taken.add(unique)
    return unique


def _inspect_all(*, study: Study, files: Sequence[UploadedFile]) -> tuple[list[_Accepted], dict[str, str]]:
    """Decode every upload before anything is stored; return the good ones and name → reason."""
    from inference.decoding import DecodeError
    from inference.tasks import inspect_upload

    max_bytes = settings.MSKDETECT_MAX_UPLOAD_BYTES
    accepted: list[_Accepted] = []
    reasons: dict[str, str] = {}
    names: set[str] = set()
    seen: set[str] = set(study.images.values_list("sha256", flat=True))
    for index, upload in enumerate(files):
        name = _display_name(upload, index, names)
        if upload.size is not None and upload.size > max_bytes:
            reasons[name] = f"the file is larger than the {max_bytes // (1024 * 1024)} MB limit"
            continue
        upload.seek(0)
        data = upload.read()
        try:
            decoded = inspect_upload(data)
        except DecodeError as exc:
            reasons[name] = getattr(exc, "message", None) or str(exc)
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            reasons[name] = "this image is already part of the study"
            continue
        seen.add(digest)
        accepted.append(
            _Accepted(name, data, digest, decoded.format, int(decoded.width), int(decoded.height))
        )
    return accepted, reasons


def radiographs_add(
    *, study: Study, files: Sequence[UploadedFile], actor: AbstractBaseUser, ip: str | None = None
) -> list[Radiograph]:
    """Store every file as a queued radiograph of the study and send them to the worker.

    Every file is decoded first; if any is unusable, UploadRejected names each bad file and
    nothing is stored (no rows, no files). Sending happens after the commit.
    """
    if not files:
        raise ApplicationError("Choose at least one image file.", extra={"file": ["No file was submitted."]})
    accepted, reasons = _inspect_all(study=study, files=files)
    if reasons:
        raise UploadRejected(reasons)

    stored: list[str] = []
    try:
        images = _store(study=study, accepted=accepted, actor=actor, ip=ip, stored=stored)
    except BaseException:
        # Files are written before the rows commit; a rolled-back request must leave none behind.
        for name in stored:
            Radiograph._meta.get_field("file").storage.delete(name)
        raise
    return images


@transaction.atomic
def _store(
    *, study: Study, accepted: list[_Accepted], actor: AbstractBaseUser, ip: str | None, stored: list[str]
) -> list[Radiograph]:
    study = Study.objects.select_for_update().get(pk=study.pk)
    images: list[Radiograph] = []
    for item in accepted:
        image = Radiograph(
            study=study,
            sha256=item.sha256,
            original_name=item.name[:255],
            format=item.format,
            width=item.width,
            height=item.height,
            status=ImageStatus.QUEUED,
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
        audit_record(actor=actor, action="image.uploaded", obj=image, study=study, ip=ip, details=details)
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
