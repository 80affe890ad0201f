"""Patient writes."""

import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from studies.audit import audit_record
from studies.errors import ApplicationError
from studies.models import Patient, Sex

DUPLICATE_MRN = "A patient with this MRN already exists."
DUPLICATE_MRN_FROM_ISSUER = "A patient with this MRN from this issuer already exists."


@transaction.atomic
def patient_create(
    *,
    mrn: str,
    name: str,
    birth_date: datetime.date | None,
    sex: str,
    actor: AbstractBaseUser | None,
    ip: str | None = None,
    mrn_issuer: str = "",
    source: dict | None = None,
) -> Patient:
    """Register a patient; a duplicate MRN (from the same issuer) or a birth date in the future is refused.

    `mrn_issuer`: who assigned the MRN (DICOM IssuerOfPatientID), blank for this hospital.
    `source`: the DICOM sender when the patient comes from a received file (audited; no actor then).
    """
    mrn = (mrn or "").strip()
    mrn_issuer = (mrn_issuer or "").strip()
    duplicate = DUPLICATE_MRN_FROM_ISSUER if mrn_issuer else DUPLICATE_MRN
    name = (name or "").strip()
    sex = sex or Sex.UNKNOWN
    errors: dict[str, list[str]] = {}
    if not mrn:
        errors["mrn"] = ["The MRN is required."]
    if not name:
        errors["name"] = ["The name is required."]
    if sex not in Sex.values:
        errors["sex"] = [f"Unknown sex '{sex}'. Allowed: {', '.join(Sex.values)}."]
    if birth_date and birth_date > timezone.localdate():
        errors["birth_date"] = ["The birth date is in the future."]
    if mrn and Patient.objects.filter(mrn=mrn, mrn_issuer=mrn_issuer).exists():
        errors["mrn"] = [duplicate]
    if errors:
        raise ApplicationError("The patient could not be registered.", extra=errors)
    try:
        # A savepoint, so that losing a race on the unique MRN leaves the outer transaction usable.
        with transaction.atomic():
            patient = Patient.objects.create(
                mrn=mrn,
                mrn_issuer=mrn_issuer,
                name=name,
                birth_date=birth_date,
                sex=sex,
                created_by=actor if actor is not None and actor.is_authenticated else None,
            )
    except IntegrityError as exc:
        raise ApplicationError(duplicate, extra={"mrn": [duplicate]}) from exc
    details: dict = {"mrn": mrn}
    if mrn_issuer:
        details["mrn_issuer"] = mrn_issuer
    if source:
        details["source"] = source
    audit_record(actor=actor, action="patient.created", obj=patient, ip=ip, details=details)
    return patient
