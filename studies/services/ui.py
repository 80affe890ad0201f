"""Writes that the HTML pages combine from the clinical services."""

import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from studies import selectors
from studies.models import Study
from studies.services.patients import patient_create
from studies.services.studies import study_create


@transaction.atomic
def study_register(
    *,
    patient_id: int | None,
    new_patient: dict | None,
    accession_number: str,
    body_part: str,
    study_date: datetime.date | None,
    actor: AbstractBaseUser,
    expected_images: int | None = None,
    ip: str | None = None,
) -> Study:
    """Register a study for an existing patient, or for a new one created in the same transaction.

    `new_patient` holds `mrn`, `name`, `birth_date` and `sex` and is used when `patient_id` is
    None; if the study is refused, the new patient is not kept either.
    """
    if patient_id is not None:
        patient = selectors.patient_detail(user=actor, patient_id=patient_id)
    else:
        new_patient = new_patient or {}
        patient = patient_create(
            mrn=new_patient.get("mrn", ""),
            name=new_patient.get("name", ""),
            birth_date=new_patient.get("birth_date"),
            sex=new_patient.get("sex", ""),
            actor=actor,
            ip=ip,
        )
    return study_create(
        patient=patient,
        accession_number=accession_number,
        body_part=body_part,
        study_date=study_date,
        expected_images=expected_images,
        actor=actor,
        ip=ip,
    )
