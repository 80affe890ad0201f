"""Template filters for the intake warnings: missing files and confirmed header mismatches."""

from django import template

from studies.models import Study
from studies.selectors import files_received

register = template.Library()


@register.filter
def files_missing(study: Study) -> str:
    """ "2 of 4 files received" while files are missing from the study, else an empty string."""
    state = files_received(study)
    return state.text if state.missing else ""
