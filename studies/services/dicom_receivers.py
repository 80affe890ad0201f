"""The DICOM receiver's heartbeat row (bookkeeping, not clinical data: no audit events).

`manage.py dicom_receiver` calls these through studies.dicom_receiver; /healthz reads the rows.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.utils import timezone

from studies.models import DicomReceiverRun

# Rows of receivers that stopped beating are kept this long (for /healthz and the admin).
RUNS_KEPT = timedelta(days=7)


@dataclass(frozen=True)
class ReceiverFigures:
    """What a running receiver has counted since it started."""

    associations: int = 0
    associations_refused: int = 0
    instances_stored: int = 0
    instances_duplicate: int = 0
    instances_refused: int = 0
    last_received_at: datetime | None = None


def dicom_receiver_register(
    *, run_id: str, ae_title: str, port: int, host: str, pid: int
) -> DicomReceiverRun:
    """Record a receiver that has just started listening; forgets runs long gone."""
    now = timezone.now()
    DicomReceiverRun.objects.filter(beat_at__lt=now - RUNS_KEPT).delete()
    run, _ = DicomReceiverRun.objects.update_or_create(
        run_id=run_id,
        defaults={"ae_title": ae_title, "port": port, "host": host, "pid": pid, "beat_at": now},
        create_defaults={
            "ae_title": ae_title,
            "port": port,
            "host": host,
            "pid": pid,
            "started_at": now,
            "beat_at": now,
        },
    )
    return run


def dicom_receiver_beat(*, run_id: str, figures: ReceiverFigures, stopped: bool = False) -> bool:
    """Refresh the heartbeat and the counters (and mark the run stopped); False when it has no row."""
    now = timezone.now()
    values = {
        "beat_at": now,
        "associations": figures.associations,
        "associations_refused": figures.associations_refused,
        "instances_stored": figures.instances_stored,
        "instances_duplicate": figures.instances_duplicate,
        "instances_refused": figures.instances_refused,
        "last_received_at": figures.last_received_at,
    }
    if stopped:
        values["stopped_at"] = now
    return bool(DicomReceiverRun.objects.filter(run_id=run_id, stopped_at__isnull=True).update(**values))
