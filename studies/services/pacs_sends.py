"""Sending results back to the PACS: plan (with the result or review), send, retry.

- `pacs_exports_plan` runs inside the transaction that records a study's result or a review: it
  keeps what will be sent (DicomExport) and one pending DicomSend per destination, so nothing is
  lost if the broker or the worker is down; the send task is published after the commit.
- `dicom_send_attempt` is what the Celery task runs: claim the send (a lease, so two deliveries never
  send at once), have the export's DICOM files built once (studies.services.pacs_exports), send
  what the destination has not yet acknowledged, and record the outcome with its audit event.
- `dicom_send_again`: staff send a failed send again.

Demo-model results are recorded as "not sent: demo model" unless MSKDETECT_SEND_DEMO_RESULTS is on.
"""

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import pydicom
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from studies.audit import audit_record
from studies.dicom_results.destinations import CSTORE, Destination, configured_destinations
from studies.dicom_results.transfer import (
    Instance,
    InstanceOutcome,
    TransferError,
    cstore,
    stowrs,
    stowrs_authorization,
)
from studies.errors import ConflictError
from studies.models import (
    DicomExport,
    DicomExportTrigger,
    DicomSend,
    DicomSendStatus,
    ImageFormat,
    ImageStatus,
    Prediction,
    Radiograph,
    Review,
    Study,
    StudyResult,
)

logger = logging.getLogger(__name__)

# Publishing must not hold a request or a prediction job hostage when the broker is down: one quick
# retry, then the send stays pending and the periodic sweep (studies.tasks) publishes it later.
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5}
# How long an attempt holds its claim: past this (the send task's hard time limit and a margin) the
# attempt's worker is gone and the send is due again.
ATTEMPT_LEASE = timedelta(seconds=420)


@dataclass(frozen=True)
class AttemptOutcome:
    """What one attempt left: the send's status, and when to try again while it stays pending."""

    status: str
    retry_in: float | None = None


# --- planning (inside the result's or the review's transaction) ----------------------------------
def destinations() -> list[Destination]:
    """The destinations configured now (settings checked them at start-up)."""
    return configured_destinations(
        cstore_peers=list(settings.MSKDETECT_DICOM_DESTINATIONS),
        stowrs_url=settings.MSKDETECT_STOWRS_DESTINATION,
    )


def pacs_exports_plan(*, study: Study, trigger: str, review: Review | None = None) -> DicomExport | None:
    """Keep what this trigger sends and one send per destination; publish them after the commit.

    Nothing is planned when no destination is configured, when the study has no result, or when
    none of its predicted images is a DICOM file (a PNG/JPEG study has no PACS study to go to).
    A demo model's result gets sends marked "not sent: demo model" unless
    MSKDETECT_SEND_DEMO_RESULTS is on. Call it inside the transaction that records the trigger.
    """
    targets = destinations()
    if not targets:
        return None  # no query at all: most deployments without a PACS pay nothing
    result = StudyResult.objects.filter(study=study).first()
    if result is None:
        return None
    images = list(
        Radiograph.objects.filter(study=study, format=ImageFormat.DICOM, status=ImageStatus.DONE)
        .order_by("id")
        .values_list("id", flat=True)
    )
    if not images:
        return None
    predictions: list[int] = []
    if trigger == DicomExportTrigger.RESULT:
        # A heat map goes to the PACS once per prediction: images predicted earlier were sent then.
        already = {pk for export in study.dicom_exports.all() for pk in export.predictions}
        for image_id in images:
            latest = Prediction.objects.filter(radiograph_id=image_id).order_by("-finished_at", "-id").first()
            if latest is not None and latest.id not in already:
                predictions.append(latest.id)
    export = DicomExport.objects.create(
        study=study,
        trigger=trigger,
        review=review,
        result=_result_snapshot(result),
        demo=result.demo,
        images=images,
        predictions=predictions,
    )
    withheld = result.demo and not settings.MSKDETECT_SEND_DEMO_RESULTS
    now = timezone.now()
    sends = DicomSend.objects.bulk_create(
        DicomSend(
            export=export,
            study=study,
            destination=target.key,
            protocol=target.protocol,
            status=DicomSendStatus.NOT_SENT_DEMO if withheld else DicomSendStatus.PENDING,
            pending_since=now,
        )
        for target in targets
    )
    if withheld:
        audit_record(
            actor=None,
            action="result.not_sent",
            obj=export,
            study=study,
            details={
                "reason": "demo model: MSKDETECT_SEND_DEMO_RESULTS is off",
                "trigger": trigger,
                "model_name": result.model_name,
                "destinations": [target.key for target in targets],
            },
        )
        return export
    ids = [send.id for send in sends]
    transaction.on_commit(lambda: pacs_sends_publish(send_ids=ids))
    return export


def pacs_sends_publish(*, send_ids: Sequence[int], countdown: float | None = None) -> bool:
    """Hand the send task to the broker; False (the sends stay pending for the sweep) when it is down."""
    from studies.tasks import send_dicom_results

    ids = [int(send_id) for send_id in send_ids]
    if not ids:
        return True
    try:
        send_dicom_results.apply_async(
            args=[ids], countdown=countdown, retry=True, retry_policy=PUBLISH_RETRY_POLICY
        )
    except (BrokerError, OSError) as exc:
        logger.warning("Broker unavailable, PACS send(s) %s stay pending for the sweep: %s", ids, exc)
        return False
    return True


def _result_snapshot(result: StudyResult) -> dict:
    return {
        "label": result.label,
        "abnormal_probability": result.abnormal_probability,
        "threshold": result.threshold,
        "indeterminate_low": result.indeterminate_low,
        "indeterminate_high": result.indeterminate_high,
        "model_name": result.model_name,
        "model_version": result.model_version,
        "demo": result.demo,
    }


# --- one attempt (the Celery task) ---------------------------------------------------------------
def dicom_send_attempt(*, send_id: int) -> AttemptOutcome | None:
    """Try one send now: None when it is not ours to try (not pending, not due, or another worker
    holds it); else its status afterwards and, while it stays pending, the seconds until the next try.
    """
    send = _claim(send_id=send_id)
    if send is None:
        return None
    target = next((d for d in destinations() if d.key == send.destination), None)
    if target is None:
        return _record(
            send=send,
            error=f"{send.destination} is no longer configured (MSKDETECT_DICOM_DESTINATIONS / "
            "MSKDETECT_STOWRS_DESTINATION); nothing was sent",
            transient=False,
        )
    # Imported here: highdicom and the drawing code load in the worker only, not in the web process.
    from studies.services.pacs_exports import ExportBuildError, dicom_export_build

    try:
        export = dicom_export_build(export_id=send.export_id)
    except ExportBuildError as exc:
        return _record(send=send, error=exc.message, transient=False)
    waiting = [item for item in export.instances if item["sop_instance_uid"] not in set(send.acknowledged)]
    try:
        outcomes = _transfer(send=send, target=target, export=export, items=waiting)
    except TransferError as exc:
        return _record(send=send, error=exc.message, transient=True)
    except OSError as exc:  # reading the built files back from storage: a volume hiccup
        return _record(send=send, error=f"could not read the built DICOM files: {exc}", transient=True)
    refused = [outcome for outcome in outcomes if not outcome.stored]
    if refused:
        return _record(send=send, error="; ".join(outcome.error for outcome in refused), transient=False)
    return _record(send=send, error="", transient=False)


def _claim(*, send_id: int) -> DicomSend | None:
    now = timezone.now()
    with transaction.atomic():
        send = (
            DicomSend.objects.select_for_update(skip_locked=True)
            .select_related("export", "study")
            .filter(id=send_id, status=DicomSendStatus.PENDING)
            .first()
        )
        if send is None or (send.next_attempt_at is not None and send.next_attempt_at > now):
            return None
        send.attempts += 1
        send.last_attempt_at = now
        send.next_attempt_at = now + ATTEMPT_LEASE
        send.save(update_fields=["attempts", "last_attempt_at", "next_attempt_at", "updated_at"])
    return send


def _acknowledge(*, send_id: int, sop_instance_uid: str) -> None:
    # One row update per confirmed instance: a worker killed mid-association loses nothing it sent.
    with transaction.atomic():
        send = DicomSend.objects.select_for_update().get(id=send_id)
        if sop_instance_uid not in send.acknowledged:
            send.acknowledged = [*send.acknowledged, sop_instance_uid]
            send.save(update_fields=["acknowledged", "updated_at"])


def _transfer(
    *, send: DicomSend, target: Destination, export: DicomExport, items: list[dict]
) -> list[InstanceOutcome]:
    if not items:
        return []
    instances = [
        Instance(
            sop_class_uid=item["sop_class_uid"],
            sop_instance_uid=item["sop_instance_uid"],
            data=_read_file(item["file"]),
        )
        for item in items
    ]

    def stored(uid: str) -> None:
        _acknowledge(send_id=send.id, sop_instance_uid=uid)

    timeout = settings.MSKDETECT_PACS_TIMEOUT_SECONDS
    if target.protocol == CSTORE:
        return cstore(
            peer=target,
            calling_ae=settings.MSKDETECT_DICOM_AE_TITLE,
            instances=[(instance, pydicom.dcmread(io.BytesIO(instance.data))) for instance in instances],
            timeout=timeout,
            on_stored=stored,
        )
    return stowrs(
        destination=target,
        study_instance_uid=items[0]["study_instance_uid"],
        instances=instances,
        authorization=stowrs_authorization(
            token=settings.MSKDETECT_STOWRS_TOKEN,
            user=settings.MSKDETECT_STOWRS_USER,
            password=settings.MSKDETECT_STOWRS_PASSWORD,
        ),
        timeout=timeout,
        on_stored=stored,
    )


def _read_file(name: str) -> bytes:
    with default_storage.open(name, "rb") as stored:
        return stored.read()


def _record(*, send: DicomSend, error: str, transient: bool) -> AttemptOutcome:
    """The attempt's outcome: sent, pending with the next try's time, or failed; audited."""
    now = timezone.now()
    with transaction.atomic():
        row = DicomSend.objects.select_for_update().select_related("export").get(id=send.id)
        details = _send_details(row)
        retry_in = None
        if not error:
            row.status, row.sent_at, row.last_error, row.next_attempt_at = DicomSendStatus.SENT, now, "", None
            action = "result.sent"
            details["sop_instance_uids"] = [item["sop_instance_uid"] for item in row.export.instances]
        else:
            give_up_at = row.pending_since + timedelta(seconds=settings.MSKDETECT_PACS_GIVE_UP_AFTER_SECONDS)
            retry_in = _backoff(row.attempts)
            if transient and now + timedelta(seconds=retry_in) < give_up_at:
                row.next_attempt_at = now + timedelta(seconds=retry_in)
                details.update(will_retry=True, next_attempt_at=row.next_attempt_at.isoformat())
            else:
                row.status, row.next_attempt_at, retry_in = DicomSendStatus.FAILED, None, None
                details.update(
                    will_retry=False,
                    gave_up="retries ran out" if transient else "the destination refused it",
                )
            row.last_error = error[:2000]
            action = "result.send_failed"
            details["error"] = row.last_error
        row.save(update_fields=["status", "sent_at", "last_error", "next_attempt_at", "updated_at"])
        audit_record(actor=None, action=action, obj=row, study=row.study, details=details)
    if error:
        logger.warning("PACS send %s to %s, attempt %d: %s", row.id, row.destination, row.attempts, error)
    return AttemptOutcome(status=row.status, retry_in=retry_in)


def _backoff(attempts: int) -> float:
    base = settings.MSKDETECT_PACS_RETRY_SECONDS
    return float(min(base * 2 ** max(attempts - 1, 0), settings.MSKDETECT_PACS_RETRY_MAX_SECONDS))


def _send_details(send: DicomSend) -> dict:
    """The audit details of a send: where, what, which attempt (no patient data)."""
    return {
        "destination": send.destination,
        "protocol": send.protocol,
        "trigger": send.export.trigger,
        "objects": send.export.summary,
        "attempt": send.attempts,
    }


def dicom_send_again(*, send: DicomSend, actor: AbstractBaseUser, ip: str | None = None) -> DicomSend:
    """A failed send goes back to pending, with a fresh retry period; audited, published after commit."""
    with transaction.atomic():
        row = DicomSend.objects.select_for_update().select_related("export").get(id=send.id)
        if row.status != DicomSendStatus.FAILED:
            raise ConflictError(
                f"Only a failed send can be sent again; this one is {row.get_status_display().lower()}."
            )
        if row.export.build_error:
            # The build failed on a source that may have been fixed since: try to build it again.
            DicomExport.objects.filter(id=row.export_id).update(build_error="")
        row.status = DicomSendStatus.PENDING
        row.pending_since = timezone.now()
        row.next_attempt_at = None
        row.save(update_fields=["status", "pending_since", "next_attempt_at", "updated_at"])
        audit_record(
            actor=actor,
            action="result.send_requeued",
            obj=row,
            study=row.study,
            ip=ip,
            details={**_send_details(row), "previous_error": row.last_error},
        )
        transaction.on_commit(lambda: pacs_sends_publish(send_ids=[row.id]))
    return row


def pacs_sends_redispatch_overdue(*, now: datetime, grace: timedelta) -> list[int]:
    """Pending sends whose next try is overdue by `grace` (their message was lost: the broker was
    down when they were planned, or a worker died mid-attempt); returns their ids to publish again.

    Each is stamped due now, so the sweep sends it at most once per `grace` even while a busy worker
    has not yet taken the message. Bookkeeping only: no audit event.
    """
    overdue = Q(next_attempt_at__lt=now - grace) | Q(next_attempt_at__isnull=True, created_at__lt=now - grace)
    with transaction.atomic():
        ids = list(
            DicomSend.objects.select_for_update(skip_locked=True)
            .filter(Q(status=DicomSendStatus.PENDING) & overdue)
            .order_by("id")
            .values_list("id", flat=True)
        )
        DicomSend.objects.filter(id__in=ids).update(next_attempt_at=now)
    return ids
