"""Reads about results sent to the PACS: a study's sends (page and API) and each destination's
health (/healthz)."""

from dataclasses import dataclass, field
from typing import Any

from django.db.models import Count, Max, Q

from studies.errors import NotFoundError
from studies.models import DicomSend, DicomSendStatus, ImageFormat, Study, StudyStatus
from studies.services.pacs_sends import destinations


@dataclass(frozen=True)
class PacsPanel:
    """What the study page says about the PACS."""

    configured: bool  # any destination configured
    has_dicom: bool  # the study has DICOM images, so a PACS study to send to
    sends: list[DicomSend] = field(default_factory=list)
    analysing: bool = False  # the study is being predicted: sends will follow

    @property
    def active(self) -> bool:
        """A send is pending, or will be once the analysis ends: the panel refreshes itself."""
        if any(send.status == DicomSendStatus.PENDING for send in self.sends):
            return True
        return self.configured and self.has_dicom and self.analysing


def study_pacs_sends(*, study: Study) -> list[DicomSend]:
    """The study's sends, newest first, each with its export (one query)."""
    return list(DicomSend.objects.filter(study=study).select_related("export").order_by("-created_at", "-id"))


def study_pacs_send(*, study: Study, send_id: int) -> DicomSend:
    """One send of this study; NotFoundError when the study has no such send."""
    send = DicomSend.objects.filter(study=study, id=send_id).select_related("export").first()
    if send is None:
        raise NotFoundError("No such send to the PACS.")
    return send


def study_pacs_panel(*, study: Study) -> PacsPanel:
    """The PACS panel of a study page (two queries)."""
    return PacsPanel(
        configured=bool(destinations()),
        has_dicom=study.images.filter(format=ImageFormat.DICOM).exists(),
        sends=study_pacs_sends(study=study),
        analysing=study.status in (StudyStatus.QUEUED, StudyStatus.PROCESSING),
    )


def destination_health() -> dict[str, dict[str, Any]]:
    """Per configured destination: sends pending and failed, the last success and the last failed
    attempt (with its error). One grouped query; no network (a health probe must answer at once)."""
    keys = [target.key for target in destinations()]
    rows = (
        DicomSend.objects.filter(destination__in=keys)
        .values("destination")
        .annotate(
            pending=Count("id", filter=Q(status=DicomSendStatus.PENDING)),
            failing=Count("id", filter=Q(status=DicomSendStatus.PENDING) & ~Q(last_error="")),
            failed=Count("id", filter=Q(status=DicomSendStatus.FAILED)),
            last_sent=Max("sent_at"),
        )
    )
    figures = {row["destination"]: row for row in rows}
    report = {}
    for key in keys:
        row = figures.get(key, {})
        last_error = (
            DicomSend.objects.filter(destination=key)
            .exclude(last_error="")
            .order_by("-last_attempt_at")
            .first()
        )
        report[key] = {
            "pending": row.get("pending", 0),
            "retrying": row.get("failing", 0),
            "failed": row.get("failed", 0),
            "last_sent_at": row["last_sent"].isoformat() if row.get("last_sent") else None,
            "last_error_at": last_error.last_attempt_at.isoformat()
            if last_error and last_error.last_attempt_at
            else None,
            "last_error": last_error.last_error[:300] if last_error else "",
        }
    return report
