"""Inference worker liveness: each running worker's heartbeat row (bookkeeping, not clinical data).

The worker calls these only through `inference/worker.py`. No audit events: nothing clinical
changes here (what happens to images is audited by the prediction services).
"""

from collections.abc import Sequence
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from studies.models import InferenceWorker


def inference_worker_register(*, worker_id: str, nodename: str, host: str, pid: int) -> InferenceWorker:
    """Record a worker that has just started (or beat again after its row went missing)."""
    now = timezone.now()
    worker, _ = InferenceWorker.objects.update_or_create(
        worker_id=worker_id,
        defaults={"nodename": nodename, "host": host, "pid": pid, "beat_at": now, "stopped_at": None},
        create_defaults={
            "nodename": nodename,
            "host": host,
            "pid": pid,
            "started_at": now,
            "beat_at": now,
        },
    )
    return worker


def inference_worker_beat(*, worker_id: str, at: datetime | None = None) -> bool:
    """Refresh the heartbeat; False when the worker has no row (register it again)."""
    return bool(
        InferenceWorker.objects.filter(worker_id=worker_id, stopped_at__isnull=True).update(
            beat_at=at or timezone.now()
        )
    )


def inference_workers_stop(*, worker_ids: Sequence[str]) -> int:
    """Mark workers gone (a graceful stop, or a predecessor a new worker found dead)."""
    with transaction.atomic():
        return InferenceWorker.objects.filter(worker_id__in=list(worker_ids), stopped_at__isnull=True).update(
            stopped_at=timezone.now()
        )


def inference_workers_forget(*, silent_before: datetime) -> int:
    """Delete the rows of workers that have not beaten since `silent_before` (long gone)."""
    deleted, _ = InferenceWorker.objects.filter(beat_at__lt=silent_before).delete()
    return deleted
