"""The study page's panel for studies received by DICOM (sender, derived accession, body part pending)."""

from django import template

from studies.forms import BodyPartForm
from studies.selectors_receiver import received_study

register = template.Library()


@register.inclusion_tag("studies/partials/received_study.html", takes_context=True)
def received_study_panel(context, study) -> dict:
    """Nothing for a study registered by hand; else how it came in and, while it waits for a body
    part, what its header said and the form to set one."""
    request = context.get("request")
    facts = received_study(user=getattr(request, "user", None), study=study)
    return {
        "facts": facts,
        "study": study,
        "form": BodyPartForm(auto_id="body-part-%s") if facts and facts.waiting_for_body_part else None,
        "csrf_token": context.get("csrf_token"),
    }
