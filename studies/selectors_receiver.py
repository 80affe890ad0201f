"""Reads about receiving by DICOM: the receiver's health for /healthz (no patient data), and how a
received study came in, for its page."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from studies.models import AuditEvent, DicomReceiverRun, ImageStatus, Study
from studies.permissions import is_staff_member

ALIVE = "alive"
STOPPED = "stopped"  # its last run stopped gracefully
SILENT = "silent"  # its last run stopped beating without stopping: it crashed or hangs
NEVER_STARTED = "never_started"
RUNS_LOOKED_AT = 20


def receiver_state(*, now: datetime | None = None) -> dict[str, Any]:
    """The receivers beating now (or, with none, the last one) with their counters since they started.

    One query: the latest runs (a deployment runs one receiver, or a few).
    """
    now = now or timezone.now()
    alive_since = now - timedelta(seconds=settings.MSKDETECT_DICOM_DEAD_AFTER_SECONDS)
    latest = list(DicomReceiverRun.objects.order_by("-beat_at")[:RUNS_LOOKED_AT])
    if not latest:
        return {"state": NEVER_STARTED, "alive": 0, "runs": []}
    alive = [run for run in latest if run.stopped_at is None and run.beat_at >= alive_since]
    if alive:
        return {"state": ALIVE, "alive": len(alive), "runs": [_run(run) for run in alive]}
    last = latest[0]
    return {"state": STOPPED if last.stopped_at else SILENT, "alive": 0, "runs": [_run(last)]}


def _run(run: DicomReceiverRun) -> dict[str, Any]:
    return {
        "ae_title": run.ae_title,
        "port": run.port,
        "host": run.host,
        "started_at": run.started_at.isoformat(),
        "last_seen": run.beat_at.isoformat(),
        "stopped_at": run.stopped_at.isoformat() if run.stopped_at else None,
        "associations": run.associations,
        "associations_refused": run.associations_refused,
        "instances_stored": run.instances_stored,
        "instances_duplicate": run.instances_duplicate,
        "instances_refused": run.instances_refused,
        "last_received_at": run.last_received_at.isoformat() if run.last_received_at else None,
    }


# --- a received study, for its page ---------------------------------------------------------
BODY_PART_HEADER_FIELDS = {
    "body_part_examined": "BodyPartExamined",
    "study_description": "StudyDescription",
    "series_description": "SeriesDescription",
}


def received_body_part_header(study: Study) -> dict[str, str]:
    """What the study's DICOM files say about the body part (the first value of each field)."""
    found: dict[str, str] = {}
    for header in study.images.order_by("id").values_list("dicom_header", flat=True):
        for key in BODY_PART_HEADER_FIELDS:
            if header.get(key) and key not in found:
                found[key] = header[key]
    return found


@dataclass(frozen=True)
class ReceivedStudy:
    """How a study came in by DICOM, for its page: sender, derived accession, body part pending."""

    source: dict[str, str]
    accession_number_derived: bool
    waiting_for_body_part: bool
    body_part_header: list[tuple[str, str]]  # (DICOM attribute, value)
    waiting_images: int


def received_study(*, user, study: Study) -> ReceivedStudy | None:
    """The DICOM facts of a study created by a receiver (None for a study registered by hand)."""
    if not is_staff_member(user):
        return None
    created = (
        AuditEvent.objects.filter(study=study, action="study.created", object_type="studies.study")
        .order_by("id")
        .values_list("details", flat=True)
        .first()
    )
    source = (created or {}).get("source")
    if not source:
        return None
    header = received_body_part_header(study)
    return ReceivedStudy(
        source=source,
        accession_number_derived=bool(created.get("accession_number_derived")),
        waiting_for_body_part=not study.body_part,
        body_part_header=[
            (label, header[key]) for key, label in BODY_PART_HEADER_FIELDS.items() if key in header
        ],
        waiting_images=study.images.filter(status=ImageStatus.NEEDS_BODY_PART).count(),
    )
