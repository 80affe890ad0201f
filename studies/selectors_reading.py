"""The reading flow: which study a radiologist reads next, in worklist order, within the worklist's filters.

"Unreviewed" = the study has a model result and no radiologist has ruled on it yet; a study without
a result cannot be reviewed, so it is not in the queue. The order is the worklist's (flagged first,
then indeterminate awaiting a read, then the rest, each by P(abnormal), then oldest), read from the
stored sort key, so that finding the next study costs one indexed query at any table size.
"""

from datetime import datetime
from typing import NamedTuple

from django.db.models import Q, QuerySet

from studies import selectors_ui
from studies.models import Study
from studies.permissions import is_radiologist
from studies.selectors import User


class WorklistPosition(NamedTuple):
    """A study's place in the worklist order: its sort key and id."""

    rank: int
    probability: float
    created_at: datetime
    study_id: int


def worklist_position(study: Study) -> WorklistPosition:
    """Where `study` sits in the worklist now (read before a review moves it down)."""
    return WorklistPosition(study.worklist_rank, study.worklist_probability, study.created_at, study.pk)


def reading_queue(*, user: User, **filters) -> QuerySet[Study]:
    """The studies waiting for this radiologist's read, in worklist order; empty for other roles.

    `filters` are the worklist page's (search, body_part, status, flagged, reviewed, date_from,
    date_to): the flow goes through what the radiologist is looking at.
    """
    if not is_radiologist(user):
        return Study.objects.none()
    studies = selectors_ui.worklist_page(user=user, **filters)
    return studies.filter(result__isnull=False, is_reviewed=False)


def _after(position: WorklistPosition) -> Q:
    # Strictly later in the order -worklist_rank, -worklist_probability, created_at, id.
    rank, probability, created_at, study_id = position
    same_rank = Q(worklist_rank=rank)
    same_probability = same_rank & Q(worklist_probability=probability)
    return (
        Q(worklist_rank__lt=rank)
        | (same_rank & Q(worklist_probability__lt=probability))
        | (same_probability & Q(created_at__gt=created_at))
        | (same_probability & Q(created_at=created_at, pk__gt=study_id))
    )


def next_unreviewed(*, user: User, after: WorklistPosition | None = None, **filters) -> int | None:
    """The id of the study to read next, or None when nothing is left.

    Without `after`: the first study of the queue. With `after` (the study just read or skipped,
    at the place it held then): the first one below it, else, wrapping round, the first from the
    top, so that a skipped study comes back once the rest are read. The `after` study itself is
    never the answer.
    """
    queue = reading_queue(user=user, **filters).values_list("pk", flat=True)
    if after is None:
        return queue.first()
    queue = queue.exclude(pk=after.study_id)
    return queue.filter(_after(after)).first() or queue.first()
