"""The radiologist's reading flow: open the next unreviewed study, and go on to the next after a review.

The worklist's filters travel with the flow as a query string (on the study page's URL, then in the
review form), so "next" stays within what the radiologist chose to read: e.g. only wrists.
"""

from urllib.parse import urlsplit

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_GET

from studies import selectors, selectors_reading
from studies.forms import WorklistFilterForm
from studies.models import Study
from studies.permissions import is_radiologist

# The longest filter value carried along: the filter form's fields are short (a search term, a date).
MAX_FILTER_LENGTH = 200
NOTHING_LEFT = "All studies with a model result are reviewed: nothing is waiting for a read."
NOTHING_LEFT_FILTERED = "All studies matching these filters are reviewed: nothing is waiting for a read."


def reading_query(params: QueryDict) -> str:
    """The worklist filters among `params`, as the query string the flow carries (no page, no other keys)."""
    kept = QueryDict(mutable=True)
    for name in WorklistFilterForm.base_fields:
        value = params.get(name, "").strip()
        if value and len(value) <= MAX_FILTER_LENGTH:
            kept[name] = value
    return kept.urlencode()


def with_query(url: str, query: str) -> str:
    """`url` with the carried filters, if any."""
    return f"{url}?{query}" if query else url


def _filters(query: str) -> dict:
    return WorklistFilterForm(QueryDict(query)).selector_filters()


def reading_context(request: HttpRequest, study: Study) -> dict:
    """What the study page needs for the flow: the carried filters and the "next study" link."""
    if request.method == "POST":
        # A re-rendered review form (400) carries the filters in its hidden field, not in the URL.
        query = reading_query(QueryDict(request.POST.get("reading", "")))
    elif request.headers.get("HX-Request") == "true" and request.headers.get("HX-Current-URL"):
        # The study page's live update (its own URL has no filters): those of the page it updates.
        query = reading_query(QueryDict(urlsplit(request.headers["HX-Current-URL"]).query))
    else:
        query = reading_query(request.GET)
    after = QueryDict(mutable=True)
    after["after"] = str(study.pk)
    return {
        "reading_query": query,
        "reading_next_url": f"{reverse('reading_next')}?{after.urlencode()}{'&' + query if query else ''}",
        "reading_worklist_url": with_query(reverse("worklist"), query),
    }


def next_study_redirect(
    request: HttpRequest, *, query: str, after: selectors_reading.WorklistPosition | None
) -> HttpResponse:
    """To the next unreviewed study (with the filters), or back to the worklist saying nothing is left."""
    next_id = selectors_reading.next_unreviewed(user=request.user, after=after, **_filters(query))
    if next_id is None:
        messages.info(request, NOTHING_LEFT_FILTERED if query else NOTHING_LEFT)
        return redirect(with_query(reverse("worklist"), query))
    return redirect(with_query(reverse("study_detail", args=[next_id]), query))


@require_GET
@login_required
def reading_next(request: HttpRequest) -> HttpResponse:
    """ "Start reading" / "Next unreviewed": the first unreviewed study in worklist order, or the one
    after `?after=<study id>` (skipping that study without a review)."""
    if not is_radiologist(request.user):
        raise PermissionDenied("Only radiologists read studies in turn.")
    after = None
    if request.GET.get("after"):
        try:
            study_id = int(request.GET["after"])
        except ValueError:
            return HttpResponse("after: a study id is a whole number.", status=400, content_type="text/plain")
        study = selectors.study_get(user=request.user, study_id=study_id)
        after = selectors_reading.worklist_position(study)
    return next_study_redirect(request, query=reading_query(request.GET), after=after)
