"""The live worklist's change check: one aggregate query that says whether a worklist page changed.

An open worklist asks every few seconds whether anything changed. Rendering the page to find out
would cost the page's queries on every poll; this answers with one aggregate over the same filtered
studies instead, and the page is rendered only when the answer differs from the one the browser has.
"""

import hashlib
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, Max, QuerySet

from studies.models import Study


@dataclass(frozen=True)
class WorklistState:
    """How many studies match the filters, and when the latest of them (or its result) last changed."""

    count: int
    latest_change: datetime | None
    latest_result: datetime | None

    def fingerprint(self, *extra: object) -> str:
        """A short digest of the state and of `extra` (the page, the minute the ages were written in)."""
        parts = (self.count, self.latest_change, self.latest_result, *extra)
        return hashlib.sha256("|".join(str(part) for part in parts).encode()).hexdigest()[:20]


def worklist_state(*, studies: QuerySet[Study]) -> WorklistState:
    """The state of `studies` (a worklist queryset, already scoped to the user and filtered): one query.

    Every service that changes what a worklist row shows (upload, claim, result, review, "mark
    complete") stamps the study's `updated_at`; the result's own timestamp is read as well, from the
    join the worklist makes anyway. A study entering or leaving the filter changes the count or the
    latest stamp.
    """
    row = studies.aggregate(
        count=Count("pk"), latest_change=Max("updated_at"), latest_result=Max("result__created_at")
    )
    return WorklistState(
        count=row["count"], latest_change=row["latest_change"], latest_result=row["latest_result"]
    )
