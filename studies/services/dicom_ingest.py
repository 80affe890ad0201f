"""Receiving DICOM instances (issue 13): the one service both receivers call, one instance at a time.

The C-STORE receiver (studies.dicom_receiver) and STOW-RS (studies.dicomweb) hand over the bytes of
one DICOM file and who sent it (`DicomSource`). It ends in the same checks and the same store as
an upload (studies.services.radiographs: decoding limits, modality, photo/screenshot refusal,
the header rules of studies.intake), with what a receiver must add because nobody is there to
answer a question:

- the patient is found from PatientID and IssuerOfPatientID (studies.intake.patient_issuer), or
  created from the header (name, sex, birth date); an existing patient whose name clearly differs
  from the file's is a refusal, never a guess;
- the study is found by StudyInstanceUID, then AccessionNumber (a study registered by hand gets
  the UID of its first DICOM file), or created; without an AccessionNumber one is derived from the
  StudyInstanceUID (`derived_accession_number`, stable, said in the audit trail and on the page);
- a new study's body part comes from BodyPartExamined and the descriptions
  (`body_part_from_header`); when they name no single MURA type the study is stored and waits for
  staff (`study_body_part_set`): its images are not predicted until then;
- each SOP Instance UID is stored once: a re-send changes nothing and succeeds (`duplicate`), and
  the receivers audit duplicates once per association (`dicom_duplicates_record`);
- a refusal (`InstanceRefused`) carries the DIMSE status to answer with and is audited, naming
  the sender, with nothing stored.
"""

import hashlib
import io
import logging
import warnings
from dataclasses import dataclass, replace
from datetime import date
from typing import Any

import pydicom
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from inference.dicom_body_parts import body_part_conflicts, mura_type_of, regions_in
from studies.audit import audit_record
from studies.errors import ApplicationError, ConflictError
from studies.intake import patient_issuer
from studies.models import AuditEvent, BodyPart, ImageStatus, Patient, Radiograph, Sex, Study, StudyStatus
from studies.selectors_receiver import received_body_part_header
from studies.services.patients import patient_create
from studies.services.radiographs import (
    Refused,
    first_dicom_header,
    inspect_decoded,
    size_refusal,
    store_accepted,
)
from studies.services.studies import _enqueue_on_commit, study_create, unknown_body_part_message

logger = logging.getLogger(__name__)

C_STORE = "c-store"
STOW_RS = "stow-rs"

# DIMSE status of a refused C-STORE, and the FailureReason of a refused STOW-RS instance
# (PS3.4 B.2.3 and PS3.18 10.5.3: A7xx out of resources, A9xx data set does not match the SOP
# class, Cxxx cannot understand). The C0xx codes below 0xC010 are ours, documented in
# docs/deploy.md; the error comment says the rest in words.
OUT_OF_RESOURCES = 0xA700  # the database or the storage is unavailable: send again later
DOES_NOT_MATCH = 0xA900  # identifying attributes missing or inconsistent
CANNOT_UNDERSTAND = 0xC000  # not a readable image: corrupt, truncated, no pixel data, too large
REFUSED_BY_INTAKE = 0xC001  # readable, but not a projection radiograph (modality, photo, screenshot)
HEADER_MISMATCH = 0xC002  # disagrees with the patient or study it belongs to

# The DecodeError codes (inference.decoding, inference.image_content) that are intake refusals.
_INTAKE_CODES = frozenset({"unsupported_modality", "not_a_radiograph"})
_IDENTITY_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "AccessionNumber",
    "StudyDate",
    "PatientID",
    "IssuerOfPatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
]
UNKNOWN_PATIENT_NAME = "Unknown"
DUPLICATES_LISTED = 50


@dataclass(frozen=True)
class DicomSource:
    """Who sent an instance: C-STORE (calling/called AE titles, peer address) or STOW-RS (user, address)."""

    kind: str
    calling_ae: str = ""
    called_ae: str = ""
    peer: str | None = None
    user: AbstractBaseUser | None = None

    def details(self) -> dict[str, str]:
        """The sender, for audit events (no empty values)."""
        values = {
            "kind": self.kind,
            "calling_ae": self.calling_ae,
            "called_ae": self.called_ae,
            "peer": self.peer or "",
        }
        return {key: value for key, value in values.items() if value}


class InstanceRefused(Exception):
    """The instance was not stored; `status` is the DIMSE status / STOW-RS FailureReason."""

    def __init__(
        self, message: str, *, status: int, sop_class_uid: str = "", sop_instance_uid: str = ""
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid


@dataclass(frozen=True)
class Received:
    """An instance stored now, or found stored already (`duplicate`: nothing changed)."""

    sop_class_uid: str
    sop_instance_uid: str
    study_id: int
    image_id: int
    duplicate: bool
    waiting_for_body_part: bool


@dataclass(frozen=True)
class _Identity:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    accession_number: str
    study_date: date | None
    patient_id: str
    issuer_of_patient_id: str
    patient_name: str
    birth_date: date | None
    sex: str


# --- what the header says ---------------------------------------------------------------------
def derived_accession_number(study_instance_uid: str) -> str:
    """The accession number given to a received study that has none: stable for its StudyInstanceUID."""
    return "UID-" + hashlib.sha256(study_instance_uid.encode()).hexdigest()[:16].upper()


def body_part_from_header(header: dict[str, str]) -> str:
    """The MURA study type the header names unambiguously, else "" (the study waits for staff).

    BodyPartExamined decides when it names one MURA type and no description names an incompatible
    region; otherwise every region the three fields name must be the same MURA type.
    """
    examined = mura_type_of(header.get("body_part_examined"))
    if examined:
        return "" if body_part_conflicts(examined, header) else examined
    regions = [
        region
        for field in ("body_part_examined", "study_description", "series_description")
        for region in regions_in(header.get(field))
    ]
    types = {region.mura_type for region in regions}
    if len(types) == 1 and None not in types:
        return types.pop() or ""
    return ""


def _text(dataset: pydicom.Dataset, keyword: str) -> str:
    value = dataset.get(keyword)
    return str(value).strip() if value is not None else ""


def _date(value: str) -> date | None:
    try:
        return date(int(value[0:4]), int(value[4:6]), int(value[6:8]))
    except (TypeError, ValueError):
        return None


def _identity(data: bytes) -> _Identity:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(
                io.BytesIO(data), force=True, stop_before_pixels=True, specific_tags=_IDENTITY_TAGS
            )
        values = {keyword: _text(dataset, keyword) for keyword in _IDENTITY_TAGS}
    except Exception as exc:  # pydicom raises many types on damaged data; none may escape a receiver
        raise InstanceRefused(f"The DICOM data set cannot be read: {exc}.", status=CANNOT_UNDERSTAND) from exc
    if not any(values.values()):
        raise InstanceRefused("The data set holds no readable DICOM attributes.", status=CANNOT_UNDERSTAND)
    sop_class, sop_instance = values["SOPClassUID"], values["SOPInstanceUID"]
    for keyword in ("SOPInstanceUID", "StudyInstanceUID"):
        if not values[keyword]:
            raise InstanceRefused(
                f"The instance has no {keyword}.",
                status=DOES_NOT_MATCH,
                sop_class_uid=sop_class,
                sop_instance_uid=sop_instance,
            )
        if len(values[keyword]) > 64:
            raise InstanceRefused(
                f"The {keyword} is longer than 64 characters.",
                status=DOES_NOT_MATCH,
                sop_class_uid=sop_class,
                sop_instance_uid=sop_instance[:64],
            )
    sex = values["PatientSex"].upper()
    birth_date = _date(values["PatientBirthDate"])
    return _Identity(
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        study_instance_uid=values["StudyInstanceUID"],
        accession_number=values["AccessionNumber"][:64],
        study_date=_date(values["StudyDate"]),
        patient_id=values["PatientID"][:64],
        issuer_of_patient_id=values["IssuerOfPatientID"][:64],
        patient_name=values["PatientName"],
        birth_date=birth_date if birth_date and birth_date <= timezone.localdate() else None,
        sex=sex if sex in Sex.values else Sex.UNKNOWN,
    )


def person_name(dicom_name: str) -> str:
    """A DICOM PN (FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX) in reading order (PREFIX GIVEN MIDDLE FAMILY SUFFIX)."""
    parts = [part.strip() for part in dicom_name.split("=")[0].split("^")] + [""] * 5
    family, given, middle, prefix, suffix = parts[:5]
    return " ".join(part for part in (prefix, given, middle, family, suffix) if part)[:200]


# --- the service ------------------------------------------------------------------------------
def dicom_instance_ingest(
    *, data: bytes, source: DicomSource, sop_instance_uid: str = "", study_instance_uid: str = ""
) -> Received:
    """Store one received DICOM instance (C-STORE or STOW-RS) as a radiograph and queue it.

    `sop_instance_uid`: the UID the C-STORE request names (Affected SOP Instance UID);
    `study_instance_uid`: the study a STOW-RS request names in its URL. The data set must carry
    the same UIDs.

    Raises InstanceRefused, with the status to answer, when it cannot be stored; the refusal is
    audited (with the sender) and nothing is kept. A re-send of a stored SOP Instance UID returns
    the stored one with `duplicate=True` and changes nothing. Database and storage errors pass
    through (the receivers answer "out of resources": send again later).
    """
    try:
        return _ingest(
            data=data, source=source, sop_instance_uid=sop_instance_uid, study_instance_uid=study_instance_uid
        )
    except InstanceRefused as refusal:
        _record_refusal(refusal=refusal, source=source)
        raise


def _ingest(*, data: bytes, source: DicomSource, sop_instance_uid: str, study_instance_uid: str) -> Received:
    from inference.decoding import DecodeError
    from inference.tasks import screen_upload

    too_large = size_refusal(len(data))
    if too_large:
        raise InstanceRefused(f"The instance is refused: {too_large}.", status=CANNOT_UNDERSTAND)
    identity = _identity(data)
    uids = {"sop_class_uid": identity.sop_class_uid, "sop_instance_uid": identity.sop_instance_uid}
    if sop_instance_uid and sop_instance_uid != identity.sop_instance_uid:
        raise InstanceRefused(
            f"The request names SOP Instance UID {sop_instance_uid}; the data set holds "
            f"{identity.sop_instance_uid}.",
            status=DOES_NOT_MATCH,
            **uids,
        )
    if study_instance_uid and study_instance_uid != identity.study_instance_uid:
        raise InstanceRefused(
            f"The instance belongs to study {identity.study_instance_uid}, not to study {study_instance_uid} "
            "named in the request.",
            status=DOES_NOT_MATCH,
            **uids,
        )
    stored = _stored_instance(identity)
    if stored is not None:
        return stored
    try:
        decoded = screen_upload(data)
    except DecodeError as exc:
        status = REFUSED_BY_INTAKE if exc.code in _INTAKE_CODES else CANNOT_UNDERSTAND
        raise InstanceRefused(exc.message, status=status, **uids) from exc
    images: list[Radiograph] = []
    try:
        with transaction.atomic():
            study, link_uid = _study_for(identity=identity, header=decoded.metadata, source=source)
            outcome = inspect_decoded(
                name=identity.sop_instance_uid,
                data=data,
                decoded=decoded,
                study=study,
                seen=set(study.images.values_list("sha256", flat=True)),
                first_header=first_dicom_header(study),
                confirm_mismatch=False,
            )
            if isinstance(outcome, Refused):
                status = HEADER_MISMATCH if outcome.mismatches else REFUSED_BY_INTAKE
                # Nobody is there to confirm a mismatch: the sender must correct the data.
                raise InstanceRefused(f"{outcome.reason}.", status=status, **uids)
            if link_uid:
                _link_study(study=study, identity=identity, source=source)
            images = store_accepted(
                study=study,
                accepted=[replace(outcome, sop_instance_uid=identity.sop_instance_uid)],
                actor=source.user,
                ip=source.peer,
                action="image.received",
                source=source.details(),
            )
    except IntegrityError:
        # Another association stored the same SOP Instance UID at the same moment.
        _delete_files(images)
        stored = _stored_instance(identity)
        if stored is None:
            raise
        return stored
    except BaseException:
        _delete_files(images)
        raise
    image = images[0]
    return Received(
        sop_class_uid=identity.sop_class_uid,
        sop_instance_uid=identity.sop_instance_uid,
        study_id=image.study_id,
        image_id=image.pk,
        duplicate=False,
        waiting_for_body_part=image.status == ImageStatus.NEEDS_BODY_PART,
    )


def _delete_files(images: list[Radiograph]) -> None:
    # Only reached when the commit failed after the files were written (store_accepted cleans up
    # after its own failures): a rolled-back instance leaves no file behind.
    for image in images:
        image.file.storage.delete(image.file.name)


def _stored_instance(identity: _Identity) -> Received | None:
    row = (
        Radiograph.objects.filter(sop_instance_uid=identity.sop_instance_uid)
        .values("id", "study_id", "status")
        .first()
    )
    if row is None:
        return None
    return Received(
        sop_class_uid=identity.sop_class_uid,
        sop_instance_uid=identity.sop_instance_uid,
        study_id=row["study_id"],
        image_id=row["id"],
        duplicate=True,
        waiting_for_body_part=row["status"] == ImageStatus.NEEDS_BODY_PART,
    )


def _locked_studies():
    return Study.objects.select_for_update(of=("self",)).select_related("patient")


def _study_for(*, identity: _Identity, header: dict[str, str], source: DicomSource) -> tuple[Study, bool]:
    """The study the instance belongs to (locked), and whether its StudyInstanceUID is still to record."""
    uids = {"sop_class_uid": identity.sop_class_uid, "sop_instance_uid": identity.sop_instance_uid}
    study = _locked_studies().filter(study_instance_uid=identity.study_instance_uid).first()
    if study is not None:
        return study, False
    if identity.accession_number:
        study = _locked_studies().filter(accession_number=identity.accession_number).first()
        if study is not None:
            if study.study_instance_uid:
                raise InstanceRefused(
                    f"AccessionNumber {identity.accession_number} belongs to a study with another "
                    f"StudyInstanceUID ({study.study_instance_uid}): the instance comes from another "
                    "examination.",
                    status=HEADER_MISMATCH,
                    **uids,
                )
            return study, True
    patient = _patient_for(identity=identity, source=source)
    accession_number = identity.accession_number or derived_accession_number(identity.study_instance_uid)
    body_part = body_part_from_header(header)
    notes: dict[str, Any] = {"accession_number_derived": not identity.accession_number}
    if not body_part:
        notes["body_part_not_recognised"] = {
            key: header[key]
            for key in ("body_part_examined", "study_description", "series_description")
            if header.get(key)
        }
    try:
        study = study_create(
            patient=patient,
            accession_number=accession_number,
            body_part=body_part,
            study_date=identity.study_date,
            actor=source.user,
            ip=source.peer,
            study_instance_uid=identity.study_instance_uid,
            source=source.details(),
            notes=notes,
        )
    except ApplicationError as exc:
        # Created meanwhile by another association (the unique UID), or the accession is taken.
        study = _locked_studies().filter(study_instance_uid=identity.study_instance_uid).first()
        if study is None:
            raise InstanceRefused(exc.message, status=HEADER_MISMATCH, **uids) from exc
        return study, False
    if not body_part:
        logger.info(
            "Study %s (%s) received with no recognised body part: it waits for staff",
            study.pk,
            accession_number,
        )
    return _locked_studies().get(pk=study.pk), False


def _patient_for(*, identity: _Identity, source: DicomSource) -> Patient:
    if not identity.patient_id:
        raise InstanceRefused(
            "The instance has no PatientID and its study is not known here: there is no patient to file "
            "it under.",
            status=DOES_NOT_MATCH,
            sop_class_uid=identity.sop_class_uid,
            sop_instance_uid=identity.sop_instance_uid,
        )
    issuer = patient_issuer(identity.issuer_of_patient_id)
    patient = Patient.objects.filter(mrn=identity.patient_id, mrn_issuer=issuer).first()
    if patient is not None:
        # Its name is compared with the file's by the intake checks (a clear difference refuses).
        return patient
    try:
        return patient_create(
            mrn=identity.patient_id,
            mrn_issuer=issuer,
            name=person_name(identity.patient_name) or UNKNOWN_PATIENT_NAME,
            birth_date=identity.birth_date,
            sex=identity.sex,
            actor=source.user,
            ip=source.peer,
            source=source.details(),
        )
    except ApplicationError as exc:
        patient = Patient.objects.filter(mrn=identity.patient_id, mrn_issuer=issuer).first()
        if patient is None:
            raise InstanceRefused(
                exc.message,
                status=DOES_NOT_MATCH,
                sop_class_uid=identity.sop_class_uid,
                sop_instance_uid=identity.sop_instance_uid,
            ) from exc
        return patient


def _link_study(*, study: Study, identity: _Identity, source: DicomSource) -> None:
    """A study registered by hand receives its first DICOM instance: record its StudyInstanceUID."""
    study.study_instance_uid = identity.study_instance_uid
    study.save(update_fields=["study_instance_uid", "updated_at"])
    audit_record(
        actor=source.user,
        action="study.dicom_linked",
        obj=study,
        ip=source.peer,
        details={"study_instance_uid": identity.study_instance_uid, "source": source.details()},
    )


def _record_refusal(*, refusal: InstanceRefused, source: DicomSource) -> None:
    # Nothing was stored, so the event names the instance, not a row; logged too for the operator.
    logger.warning(
        "Refused DICOM instance %s from %s: %s",
        refusal.sop_instance_uid or "(no SOPInstanceUID)",
        source.details(),
        refusal.message,
    )
    user = source.user if source.user is not None and source.user.is_authenticated else None
    try:
        AuditEvent.objects.create(
            actor=user,
            actor_username=user.get_username() if user else "",
            action="dicom.instance_refused",
            object_type="dicom.instance",
            object_id=refusal.sop_instance_uid[:64],
            ip_address=source.peer or None,
            details={
                "source": source.details(),
                "status": f"0x{refusal.status:04X}",
                "reason": refusal.message,
                "sop_class_uid": refusal.sop_class_uid,
            },
        )
    except Exception:  # the refusal stands even if the database is what failed
        logger.exception("Could not audit the refusal of %s", refusal.sop_instance_uid)


def dicom_duplicates_record(
    *, source: DicomSource, study_id: int, sop_instance_uids: list[str]
) -> AuditEvent:
    """One audit event for the instances of a study sent again within one association (or request).

    Nothing else changes: the instances were stored once, and are not predicted again.
    """
    study = Study.objects.get(pk=study_id)
    return audit_record(
        actor=source.user,
        action="image.duplicate_received",
        obj=study,
        ip=source.peer,
        details={
            "source": source.details(),
            "instances": len(sop_instance_uids),
            "sop_instance_uids": sop_instance_uids[:DUPLICATES_LISTED],
        },
    )


# --- staff set the body part of a study that waits for one -----------------------------------
@transaction.atomic
def study_body_part_set(
    *, study: Study, body_part: str, actor: AbstractBaseUser, ip: str | None = None
) -> Study:
    """Staff name the body part of a received study whose header named none: its images are queued.

    Only while the study has no body part (ConflictError otherwise); audited with what the header
    said, so the decision can be checked later.
    """
    if body_part not in BodyPart.values:
        raise ApplicationError(
            unknown_body_part_message(body_part), extra={"body_part": [unknown_body_part_message(body_part)]}
        )
    study = Study.objects.select_for_update().get(pk=study.pk)
    if study.body_part:
        raise ConflictError(f"This study's body part is already set ({study.get_body_part_display()}).")
    waiting = list(study.images.filter(status=ImageStatus.NEEDS_BODY_PART).values_list("id", flat=True))
    Radiograph.objects.filter(id__in=waiting).update(status=ImageStatus.QUEUED, error="")
    study.body_part = body_part
    study.status = StudyStatus.QUEUED if waiting else StudyStatus.NEW
    study.error = ""
    study.save(update_fields=["body_part", "status", "error", "updated_at"])
    audit_record(
        actor=actor,
        action="study.body_part_set",
        obj=study,
        ip=ip,
        details={"body_part": body_part, "images": waiting, "header": received_body_part_header(study)},
    )
    _enqueue_on_commit(waiting)
    return study
