"""The worklist's wording: when a study was received, the patient's age, a review's final label."""

import datetime

from django import template
from django.utils import timezone

from studies.models import Label, Study

register = template.Library()


@register.filter
def received_ago(value: datetime.datetime | None) -> str:
    """How long ago a study arrived: 'just now', '12 min ago', '5 h ago', '3 d ago', then the date."""
    if value is None:
        return ""
    seconds = max(int((timezone.now() - value).total_seconds()), 0)
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    if seconds < 30 * 86400:
        return f"{seconds // 86400} d ago"
    local = timezone.localtime(value)
    return f"{local.day} {local:%b %Y}"


def age_text(birth_date: datetime.date, on: datetime.date) -> str:
    """An age as clinicians write it: '12 d' under a month, '8 mo' under two years, else '34 y'."""
    if birth_date > on:
        return ""
    months = (on.year - birth_date.year) * 12 + on.month - birth_date.month - (on.day < birth_date.day)
    if months < 1:
        return f"{(on - birth_date).days} d"
    if months < 24:
        return f"{months} mo"
    return f"{months // 12} y"


@register.filter
def patient_age(study: Study) -> str:
    """The patient's age on the study date (else the day the study arrived); '' without a birth date."""
    birth_date = study.patient.birth_date
    if birth_date is None:
        return ""
    on = study.study_date or timezone.localdate(study.created_at)
    return age_text(birth_date, on)


@register.filter
def label_display(value: str | None) -> str:
    """'normal' → 'Normal': a stored label as the model's choices spell it."""
    if not value:
        return ""
    return dict(Label.choices).get(value, value.capitalize())
