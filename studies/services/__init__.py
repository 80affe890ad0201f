"""Writes to the clinical records (HackSoft style): atomic, audited, keyword-only."""

from studies.services.auth import auth_token_issue
from studies.services.model_versions import model_version_record
from studies.services.patients import patient_create
from studies.services.radiographs import radiograph_view_record, radiographs_add
from studies.services.reviews import review_create
from studies.services.studies import (
    radiographs_requeue,
    study_create,
    study_mark_complete,
    study_view_record,
)

__all__ = [
    "auth_token_issue",
    "model_version_record",
    "patient_create",
    "radiograph_view_record",
    "radiographs_add",
    "radiographs_requeue",
    "review_create",
    "study_create",
    "study_mark_complete",
    "study_view_record",
]
