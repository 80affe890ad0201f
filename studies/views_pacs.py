"""The study page's "Sent to the PACS" panel: what went where and when, and "Send again" for staff."""

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from studies import selectors, selectors_pacs
from studies.audit import request_ip
from studies.errors import ApplicationError
from studies.services.pacs_sends import dicom_send_again
from studies.views import staff_required


@require_GET
@staff_required
def study_pacs_sends(request: HttpRequest, pk: int) -> HttpResponse:
    """The panel alone, polled while a send is pending (the page open was audited already)."""
    study = selectors.study_get(user=request.user, study_id=pk)
    return render(
        request,
        "studies/partials/pacs_sends.html",
        {"study": study, "pacs": selectors_pacs.study_pacs_panel(study=study)},
    )


@require_POST
@staff_required
def pacs_send_again(request: HttpRequest, pk: int, send_id: int) -> HttpResponse:
    """Staff send a failed send again: it is pending once more, with a fresh retry period."""
    study = selectors.study_get(user=request.user, study_id=pk)
    send = selectors_pacs.study_pacs_send(study=study, send_id=send_id)
    try:
        dicom_send_again(send=send, actor=request.user, ip=request_ip(request))
    except ApplicationError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, f"The results will be sent to {send.destination} again.")
    return redirect(reverse("study_detail", args=[study.pk]) + "#pacs-sends")
