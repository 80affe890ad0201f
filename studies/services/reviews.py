"""Radiologist reviews: confirm or override the model's study result."""

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from studies.audit import audit_record
from studies.errors import ApplicationError, ConflictError, NotAllowedError
from studies.models import (
    DicomExportTrigger,
    Label,
    ResultLabel,
    Review,
    ReviewDecision,
    Study,
    StudyResult,
    StudyStatus,
)
from studies.permissions import is_radiologist
from studies.services.pacs_sends import pacs_exports_plan
from studies.services.worklist import study_worklist_key_refresh


@transaction.atomic
def review_create(
    *,
    study: Study,
    radiologist: AbstractBaseUser,
    decision: str,
    final_label: str | None,
    comment: str = "",
    ip: str | None = None,
) -> Review:
    """Rule on the study's result. Confirm keeps the model's label; override changes it and needs a reason.

    An indeterminate result is no call, so there is nothing to confirm or override: the radiologist
    rules (decision "rule") abnormal or normal, a reason optional. Earlier reviews are kept; the
    latest one is the study's final label.
    """
    if not is_radiologist(radiologist):
        raise NotAllowedError("Only radiologists may review studies.")
    # The row lock orders concurrent reviews and a result arriving at the same moment.
    study = Study.objects.select_for_update().get(pk=study.pk)
    result = StudyResult.objects.filter(study=study).first()
    if result is None:
        raise ConflictError("This study has no model result yet; it can be reviewed once it has one.")
    comment = (comment or "").strip()
    if result.label == ResultLabel.INDETERMINATE or decision == ReviewDecision.RULE:
        final_label = _ruling(result_label=result.label, decision=decision, final_label=final_label)
    elif decision == ReviewDecision.CONFIRM:
        if final_label and final_label != result.label:
            raise ApplicationError(
                "A confirmation keeps the model's label.",
                extra={"final_label": [f"Confirming keeps '{result.label}'; use override to change it."]},
            )
        final_label = result.label
    elif decision == ReviewDecision.OVERRIDE:
        errors: dict[str, list[str]] = {}
        if final_label not in Label.values:
            errors["final_label"] = [f"Choose the final label: {', '.join(Label.values)}."]
        elif final_label == result.label:
            errors["final_label"] = [f"The model already said '{result.label}'; use confirm to agree."]
        if not comment:
            errors["comment"] = ["An override needs a comment giving the reason."]
        if errors:
            raise ApplicationError("The override is incomplete.", extra=errors)
    else:
        raise ApplicationError(
            f"Unknown decision '{decision}'.",
            extra={"decision": [f"Choose one of: {', '.join(ReviewDecision.values)}."]},
        )
    review = Review.objects.create(  # the check constraints restate these rules
        study=study,
        radiologist=radiologist,
        decision=decision,
        final_label=final_label,
        model_label=result.label,
        model_version=result.model_version,
        comment=comment,
    )
    study.status = StudyStatus.REVIEWED
    study.save(update_fields=["status", "updated_at"])
    study_worklist_key_refresh(study=study)
    audit_record(
        actor=radiologist,
        action="study.reviewed",
        obj=review,
        study=study,
        ip=ip,
        details={
            "decision": decision,
            "final_label": final_label,
            "model_label": result.label,
            "model_version": result.model_version,
        },
    )
    # The ruling goes to the PACS too: a new SR that supersedes the result's (after the commit).
    pacs_exports_plan(study=study, trigger=DicomExportTrigger.REVIEW, review=review)
    return review


def _ruling(*, result_label: str, decision: str, final_label: str | None) -> str:
    """The final label of a ruling on an indeterminate result; ApplicationError when it is not one."""
    if result_label != ResultLabel.INDETERMINATE:
        raise ApplicationError(
            f"The model called this study {result_label}: confirm or override it.",
            extra={
                "decision": [
                    f"'{ReviewDecision.RULE}' is for indeterminate results; use confirm or override."
                ]
            },
        )
    if decision != ReviewDecision.RULE:
        raise ApplicationError(
            "The model made no call on this study (indeterminate): there is nothing to confirm or override.",
            extra={"decision": [f"Use '{ReviewDecision.RULE}' with the final label, abnormal or normal."]},
        )
    if final_label not in Label.values:
        raise ApplicationError(
            "A ruling needs the final label.",
            extra={"final_label": [f"Choose the final label: {', '.join(Label.values)}."]},
        )
    return final_label
