"""Reads of the clinical records. Every selector takes the requesting user and scopes by role.

List selectors cost a fixed number of queries whatever the table size: related rows come
through select_related/prefetch_related and derived values (flagged, reviewed, final label)
are computed in the query. The one exception is the worklist's sort key, stored on the study by
studies.services.worklist so that an index serves the page at any table size.
"""

from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import (
    BooleanField,
    Case,
    Count,
    Exists,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import Coalesce

from studies.errors import NotFoundError
from studies.models import (
    AuditEvent,
    ModelVersion,
    Patient,
    Prediction,
    Radiograph,
    ResultLabel,
    Review,
    Study,
)
from studies.permissions import is_admin, is_staff_member

User = AbstractBaseUser | AnonymousUser


def _version_card(version: str) -> Subquery:
    # A subquery in the same SELECT (on the unique version index), not a lookup per row: a page
    # costs the same number of queries with the cards as without them.
    return Subquery(ModelVersion.objects.filter(version=OuterRef(version)).values("card")[:1])


def _intake_counts() -> dict[str, Coalesce]:
    # How many images arrived, and how many carry a confirmed header mismatch: subqueries in the
    # same SELECT, so a worklist page costs the same number of queries with them as without.
    def count(images: QuerySet[Radiograph]) -> Coalesce:
        counted = images.filter(study=OuterRef("pk")).order_by().values("study").annotate(n=Count("id"))
        return Coalesce(Subquery(counted.values("n")[:1]), Value(0))

    return {
        "images_received": count(Radiograph.objects.all()),
        "mismatch_images": count(Radiograph.objects.exclude(mismatch_reason="")),
    }


def _annotated_studies(*, model_cards: bool = True) -> QuerySet[Study]:
    reviews = Review.objects.filter(study=OuterRef("pk"))
    latest_review = reviews.order_by("-created_at", "-id")
    studies = Study.objects.annotate(**_intake_counts())
    if model_cards:
        studies = studies.annotate(result_card=_version_card("result__model_version"))
    return (
        studies.select_related("patient", "result")
        .annotate(
            is_reviewed=Exists(reviews),
            final_label=Subquery(latest_review.values("final_label")[:1]),
        )
        .annotate(
            # CASE, not a bare boolean expression: a study without a result must be False, not NULL,
            # or NULL would sort differently on SQLite and PostgreSQL.
            is_flagged=Case(
                When(Q(result__label=ResultLabel.ABNORMAL) & Q(is_reviewed=False), then=Value(True)),
                default=Value(False),
                output_field=BooleanField(),
            ),
            # Indeterminate (no call) and nobody has ruled yet: never flagged, but next in line.
            awaits_read=Case(
                When(Q(result__label=ResultLabel.INDETERMINATE) & Q(is_reviewed=False), then=Value(True)),
                default=Value(False),
                output_field=BooleanField(),
            ),
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
    model_cards: bool = True,
) -> QuerySet[Study]:
    """Studies in worklist priority: flagged-and-unreviewed first, then indeterminate results awaiting a
    read, then (within each) highest P(abnormal), then oldest.

    `model_cards`: attach each result's validation card (for `result_card`); a page that shows
    no card can leave the cards out.
    """
    if not is_staff_member(user):
        return Study.objects.none()
    studies = _annotated_studies(model_cards=model_cards)
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
    # The stored sort key (studies.services.worklist) equals (2 if is_flagged, 1 if awaits_read, else 0;
    # P(abnormal) or -1) and lets the study_worklist_rank_order index serve the page instead of a sort
    # of the whole table.
    return studies.order_by("-worklist_rank", "-worklist_probability", "created_at", "id")


def _images_with_predictions() -> QuerySet[Radiograph]:
    predictions = Prediction.objects.annotate(version_card=_version_card("model_version"))
    return Radiograph.objects.select_related("mismatch_confirmed_by").prefetch_related(
        Prefetch("predictions", queryset=predictions.order_by("-finished_at", "-id"))
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


def prediction_card(prediction: Prediction) -> dict | None:
    """The validation card of the model version that made this prediction, or None (not validated here).

    Predictions read through these selectors carry it already; any other costs one query.
    """
    if hasattr(prediction, "version_card"):
        return prediction.version_card
    return _stored_card(prediction.model_version)


def result_card(study: Study) -> dict | None:
    """The validation card of the model version behind the study's result (None without either)."""
    result = getattr(study, "result", None)
    if result is None:
        return None
    if hasattr(study, "result_card"):
        return study.result_card
    return _stored_card(result.model_version)


def _stored_card(version: str) -> dict | None:
    return ModelVersion.objects.filter(version=version).values_list("card", flat=True).first()


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


@dataclass(frozen=True)
class FilesReceived:
    """How many of the files the uploader chose have arrived (issue 10: "2 of 4 files received")."""

    received: int
    expected: int | None
    marked_complete: bool

    @property
    def missing(self) -> bool:
        """Files are still missing: fewer arrived than were chosen, and staff did not mark it complete."""
        return self.expected is not None and self.received < self.expected and not self.marked_complete

    @property
    def text(self) -> str:
        """E.g. "2 of 4 files received" (or just "2 files received" when the count was never said)."""
        if self.expected is None:
            return f"{self.received} file{'s' if self.received != 1 else ''} received"
        return f"{self.received} of {self.expected} files received"


def files_received(study: Study) -> FilesReceived:
    """The study's files-received state; studies read through these selectors carry the count already."""
    received = getattr(study, "images_received", None)
    if received is None:
        received = study.images.count()
    return FilesReceived(
        received=int(received),
        expected=study.expected_images,
        marked_complete=study.marked_complete_at is not None,
    )
