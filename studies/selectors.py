"""Reads of the clinical records. Every selector takes the requesting user and scopes by role.

List selectors cost a fixed number of queries whatever the table size: related rows come
through select_related/prefetch_related and derived values (flagged, reviewed, final label)
are computed in the query. The one exception is the worklist's sort key, stored on the study by
studies.services.worklist so that an index serves the page at any table size.
"""

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import (
    BooleanField,
    Case,
    Exists,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)

from studies.errors import NotFoundError
from studies.models import AuditEvent, Label, Patient, Prediction, Radiograph, Review, Study
from studies.permissions import is_admin, is_staff_member

User = AbstractBaseUser | AnonymousUser


def _annotated_studies() -> QuerySet[Study]:
    reviews = Review.objects.filter(study=OuterRef("pk"))
    latest_review = reviews.order_by("-created_at", "-id")
    return (
        Study.objects.select_related("patient", "result")
        .annotate(
            is_reviewed=Exists(reviews),
            final_label=Subquery(latest_review.values("final_label")[:1]),
        )
        .annotate(
            # CASE, not a bare boolean expression: a study without a result must be False, not NULL,
            # or NULL would sort differently on SQLite and PostgreSQL.
            is_flagged=Case(
                When(Q(result__label=Label.ABNORMAL) & Q(is_reviewed=False), then=Value(True)),
                default=Value(False),
                output_field=BooleanField(),
            )
        )
    )


def worklist(
    *,
    user: User,
    status: str | None = None,
    body_part: str | None = None,
    flagged: bool | None = None,
    reviewed: bool | None = None,
    patient_id: int | None = None,
) -> QuerySet[Study]:
    """Studies in worklist priority: flagged-and-unreviewed first, then highest P(abnormal), then oldest."""
    if not is_staff_member(user):
        return Study.objects.none()
    studies = _annotated_studies()
    if status:
        studies = studies.filter(status=status)
    if body_part:
        studies = studies.filter(body_part=body_part)
    if flagged is not None:
        studies = studies.filter(is_flagged=flagged)
    if reviewed is not None:
        studies = studies.filter(is_reviewed=reviewed)
    if patient_id is not None:
        studies = studies.filter(patient_id=patient_id)
    # The stored sort key (studies.services.worklist) equals (is_flagged, P(abnormal) or -1) and
    # lets the study_worklist_order index serve the page instead of a sort of the whole table.
    return studies.order_by("-worklist_flagged", "-worklist_probability", "created_at", "id")


def _images_with_predictions() -> QuerySet[Radiograph]:
    return Radiograph.objects.prefetch_related(
        Prefetch("predictions", queryset=Prediction.objects.order_by("-finished_at", "-id"))
    )


def study_detail(*, user: User, study_id: int) -> Study:
    """One study with its patient, result, images (each with predictions, newest first) and reviews."""
    if not is_staff_member(user):
        raise NotFoundError("No such study.")
    study = (
        _annotated_studies()
        .prefetch_related(
            Prefetch("images", queryset=_images_with_predictions()),
            Prefetch("reviews", queryset=Review.objects.select_related("radiologist")),
        )
        .filter(pk=study_id)
        .first()
    )
    if study is None:
        raise NotFoundError("No such study.")
    return study


def study_get(*, user: User, study_id: int) -> Study:
    """One study, without its related rows (for writes that only need the row)."""
    if not is_staff_member(user):
        raise NotFoundError("No such study.")
    study = Study.objects.filter(pk=study_id).first()
    if study is None:
        raise NotFoundError("No such study.")
    return study


def latest_prediction(image: Radiograph) -> Prediction | None:
    """The image's newest prediction, using the prefetched list when there is one."""
    predictions = list(image.predictions.all())
    return max(predictions, key=lambda p: (p.finished_at, p.pk)) if predictions else None


def image_detail(*, user: User, image_id: int) -> Radiograph:
    """One radiograph with its study and predictions."""
    if not is_staff_member(user):
        raise NotFoundError("No such image.")
    image = _images_with_predictions().select_related("study").filter(pk=image_id).first()
    if image is None:
        raise NotFoundError("No such image.")
    return image


def patient_list(*, user: User, search: str | None = None) -> QuerySet[Patient]:
    """Patients by name; `search` matches MRN or name, case-insensitively."""
    if not is_staff_member(user):
        return Patient.objects.none()
    patients = Patient.objects.order_by("name", "mrn", "id")
    if search and search.strip():
        term = search.strip()
        patients = patients.filter(Q(mrn__icontains=term) | Q(name__icontains=term))
    return patients


def patient_detail(*, user: User, patient_id: int) -> Patient:
    """One patient."""
    patient = patient_list(user=user).filter(pk=patient_id).first()
    if patient is None:
        raise NotFoundError("No such patient.")
    return patient


def audit_events(
    *,
    user: User,
    study: int | None = None,
    actor: int | str | None = None,
    action: str | None = None,
) -> QuerySet[AuditEvent]:
    """The audit trail, newest first (admins only). `actor` is a user id or a username."""
    if not is_admin(user):
        return AuditEvent.objects.none()
    events = AuditEvent.objects.order_by("-created_at", "-id")
    if study is not None:
        events = events.filter(study_id=study)
    if actor not in (None, ""):
        actor_text = str(actor)
        events = (
            events.filter(actor_id=int(actor_text))
            if actor_text.isdigit()
            else events.filter(actor_username=actor_text)
        )
    if action:
        events = events.filter(action=action)
    return events
