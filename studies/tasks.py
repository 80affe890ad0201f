"""Celery tasks of the clinical app: sending results to the PACS (on the default `celery` queue, so a
backlog of predictions on the `inference` queue never delays them). Thin adapters over
studies.services.pacs_sends; every state change and its audit event happen there.
"""

import logging
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from studies.services.pacs_sends import (
    dicom_send_attempt,
    pacs_sends_publish,
    pacs_sends_redispatch_overdue,
)

logger = logging.getLogger(__name__)

# Building a study's secondary captures and sending them takes seconds; these limits only stop a
# send that hangs. The attempt's claim (pacs_sends.ATTEMPT_LEASE) outlasts the hard limit.
SOFT_TIME_LIMIT = 300
TIME_LIMIT = 360


@shared_task(
    bind=True,
    name="studies.tasks.send_dicom_results",
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=SOFT_TIME_LIMIT,
    time_limit=TIME_LIMIT,
    max_retries=None,
    ignore_result=True,
)
def send_dicom_results(self, send_ids: list[int]) -> None:
    """Try each send once; a send that stays pending (destination down) is published again after
    its backoff, as its own message. Safe to deliver twice: a send that is not due, or that another
    worker holds, is left alone, and instances a destination acknowledged are never sent again.
    """
    for send_id in send_ids:
        try:
            outcome = dicom_send_attempt(send_id=send_id)
        except (OperationalError, InterfaceError) as exc:
            # The database is restarting: the claim (if any) expires and the sweep sends it again.
            logger.warning("Database unavailable during PACS send %s, retrying: %s", send_id, exc)
            raise self.retry(args=[[send_id]], countdown=settings.MSKDETECT_PACS_RETRY_SECONDS) from exc
        if outcome is not None and outcome.retry_in is not None:
            pacs_sends_publish(send_ids=[send_id], countdown=outcome.retry_in)


@shared_task(name="studies.tasks.dispatch_due_pacs_sends", ignore_result=True)
def dispatch_due_pacs_sends() -> int:
    """Publish again pending sends whose retry is overdue (their message was lost); run by beat."""
    grace = timedelta(seconds=settings.MSKDETECT_REDISPATCH_AFTER_SECONDS)
    overdue = pacs_sends_redispatch_overdue(now=timezone.now(), grace=grace)
    if overdue and pacs_sends_publish(send_ids=overdue):
        logger.info("Published %d overdue PACS send(s) again", len(overdue))
        return len(overdue)
    return 0
