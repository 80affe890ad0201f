"""Patient writes."""

import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from studies.audit import audit_record
from studies.errors import ApplicationError
from studies.models import Patient, Sex

DUPLICATE_MRN = "A patient with this MRN already exists."


@transaction.atomic
def patient_create(
    *,
    mrn: str,
    name: str,
    birth_date: datetime.date | None,
    sex: str,
    actor: AbstractBaseUser,
    ip: str | None = None,
) -> Patient:
    """Register a patient; a duplicate MRN or a birth date in the future is refused."""
    mrn = (mrn or "").strip()
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
    if mrn and Patient.objects.filter(mrn=mrn).exists():
        errors["mrn"] = [DUPLICATE_MRN]
    if errors:
        raise ApplicationError("The patient could not be registered.", extra=errors)
    try:
        # A savepoint, so that losing a race on the unique MRN leaves the outer transaction usable.
        with transaction.atomic():
            patient = Patient.objects.create(
                mrn=mrn, name=name, birth_date=birth_date, sex=sex, created_by=actor
            )
    except IntegrityError as exc:
        raise ApplicationError(DUPLICATE_MRN, extra={"mrn": [DUPLICATE_MRN]}) from exc
    audit_record(actor=actor, action="patient.created", obj=patient, ip=ip, details={"mrn": mrn})
    return patient
