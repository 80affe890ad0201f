"""The study page's part for studies received by DICOM: staff set a body part the header did not name."""

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from studies import selectors
from studies.audit import request_ip
from studies.errors import ApplicationError
from studies.forms import BodyPartForm
from studies.services.dicom_ingest import study_body_part_set
from studies.views import staff_required


@require_POST
@staff_required
def study_set_body_part(request: HttpRequest, pk: int) -> HttpResponse:
    """Set the body part of a study waiting for one; its images are then sent to the worker."""
    study = selectors.study_get(user=request.user, study_id=pk)
    form = BodyPartForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose the body part of this study.")
        return redirect("study_detail", pk=study.pk)
    try:
        study = study_body_part_set(
            study=study, body_part=form.cleaned_data["body_part"], actor=request.user, ip=request_ip(request)
        )
    except ApplicationError as error:
        messages.error(request, error.message)
    else:
        waiting = study.images.count()
        messages.success(
            request,
            f"Body part set to {study.get_body_part_display()}: {waiting} image(s) queued for analysis.",
        )
    return redirect("study_detail", pk=study.pk)
