"""Reads about the inference workers and the queue: /healthz figures, stalled studies.

No patient data: counts, ages and worker names only.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, Min
from django.utils import timezone

from studies.models import ImageStatus, InferenceWorker, Radiograph, Study, StudyStatus

WAITING_IMAGE_STATUSES = (ImageStatus.QUEUED, ImageStatus.PROCESSING)
WAITING_STUDY_STATUSES = (StudyStatus.QUEUED, StudyStatus.PROCESSING)


def alive_since(now: datetime | None = None) -> datetime:
    """A worker whose last beat is older than this has missed several beats: it is gone."""
    return (now or timezone.now()) - timedelta(seconds=settings.MSKDETECT_WORKER_DEAD_AFTER_SECONDS)


def live_workers(*, now: datetime | None = None):
    """Workers that are beating and have not stopped."""
    return InferenceWorker.objects.filter(beat_at__gte=alive_since(now), stopped_at__isnull=True)


@dataclass(frozen=True)
class QueueFigures:
    live_workers: int
    waiting_images: int
    oldest_waiting_seconds: float | None


def queue_figures(*, now: datetime | None = None) -> QueueFigures:
    """Live workers, images waiting for a prediction (queued or processing) and the oldest one's age."""
    now = now or timezone.now()
    waiting = Radiograph.objects.filter(status__in=WAITING_IMAGE_STATUSES).aggregate(
        count=Count("id"), oldest=Min("created_at")
    )
    oldest = waiting["oldest"]
    return QueueFigures(
        live_workers=live_workers(now=now).count(),
        waiting_images=waiting["count"],
        oldest_waiting_seconds=round((now - oldest).total_seconds(), 1) if oldest else None,
    )


@dataclass(frozen=True)
class Stall:
    """A study whose job has not moved for longer than expected."""

    last_worked_at: datetime
    live_workers: int


def study_stall(*, study: Study, now: datetime | None = None) -> Stall | None:
    """The stall of a queued/processing study, or None while its job is moving (or is done).

    Stalled = nothing happened to the study (`updated_at`: upload, claim, result) for
    MSKDETECT_STALLED_AFTER_SECONDS and no live worker holds a claim on any of its images.
    """
    if study.status not in WAITING_STUDY_STATUSES:
        return None
    now = now or timezone.now()
    if now - study.updated_at < timedelta(seconds=settings.MSKDETECT_STALLED_AFTER_SECONDS):
        return None
    workers = live_workers(now=now)
    held = Radiograph.objects.filter(
        study=study, status=ImageStatus.PROCESSING, claimed_worker__in=workers.values("worker_id")
    )
    if held.exists():
        return None
    return Stall(last_worked_at=study.updated_at, live_workers=workers.count())
