"""Reads that only the HTML pages need, built on the shared selectors (same role scoping)."""

import datetime

from django.db.models import OuterRef, Q, QuerySet, Subquery

from studies import selectors
from studies.dashboard import ResultRecord, ReviewRecord
from studies.models import AuditEvent, Patient, Radiograph, Review, StudyResult
from studies.permissions import is_staff_member
from studies.selectors import User

VIEW_ACTIONS = ("study.viewed", "image.viewed")


def worklist_page(
    *,
    user: User,
    search: str | None = None,
    date_from: datetime.date | None = None,
    date_to: datetime.date | None = None,
    **filters,
):
    """The worklist (in its priority order) with search, a received-date range and each study's first image.

    `search` matches the patient's MRN or name or the accession number; `filters` go to
    `selectors.worklist` (status, body_part, flagged, reviewed).
    """
    # The worklist page shows no validation card: leave the cards out of its query.
    studies = selectors.worklist(user=user, model_cards=False, **filters)
    if search and search.strip():
        term = search.strip()
        studies = studies.filter(
            Q(patient__mrn__icontains=term)
            | Q(patient__name__icontains=term)
            | Q(accession_number__icontains=term)
        )
    if date_from:
        studies = studies.filter(created_at__date__gte=date_from)
    if date_to:
        studies = studies.filter(created_at__date__lte=date_to)
    # A subquery, not a prefetch: the thumbnail costs no extra query per page.
    first_image = Radiograph.objects.filter(study=OuterRef("pk")).order_by("id").values("id")[:1]
    return studies.annotate(first_image_id=Subquery(first_image))


def study_audit_trail(*, user: User, study_id: int, include_views: bool = False) -> QuerySet[AuditEvent]:
    """The study's audit events, newest first, for anyone who may see the study.

    Views (opening the page, fetching pixels) are many; they are left out unless asked for.
    """
    if not is_staff_member(user):
        return AuditEvent.objects.none()
    events = AuditEvent.objects.filter(study_id=study_id).order_by("-created_at", "-id")
    if not include_views:
        events = events.exclude(action__in=VIEW_ACTIONS)
    return events


def study_view_count(*, user: User, study_id: int) -> int:
    """How many view events the study has (shown next to the trail when views are hidden)."""
    if not is_staff_member(user):
        return 0
    return AuditEvent.objects.filter(study_id=study_id, action__in=VIEW_ACTIONS).count()


def patient_by_mrn(*, user: User, mrn: str) -> Patient | None:
    """The patient with exactly this MRN, if the user may see patients."""
    if not mrn or not is_staff_member(user):
        return None
    return Patient.objects.filter(mrn=mrn.strip()).first()


def dashboard_records(*, user: User) -> tuple[list[ResultRecord], list[ReviewRecord]]:
    """Every study result and each study's latest review, as plain records (two queries)."""
    if not is_staff_member(user):
        return [], []
    results = [
        ResultRecord(
            body_part=row["study__body_part"],
            model_name=row["model_name"],
            model_version=row["model_version"],
            demo=row["demo"],
            label=row["label"],
            created_at=row["study__created_at"],
        )
        for row in StudyResult.objects.values(
            "study__body_part", "model_name", "model_version", "demo", "label", "study__created_at"
        )
    ]
    # Later rows overwrite earlier ones: the latest ruling on each study counts.
    latest: dict[int, ReviewRecord] = {}
    rows = Review.objects.order_by("study_id", "created_at", "id").values(
        "study_id", "study__body_part", "model_version", "model_label", "final_label"
    )
    for row in rows:
        latest[row["study_id"]] = ReviewRecord(
            body_part=row["study__body_part"],
            model_version=row["model_version"],
            model_label=row["model_label"],
            final_label=row["final_label"],
        )
    return results, list(latest.values())
