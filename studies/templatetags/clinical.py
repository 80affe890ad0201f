"""Template helpers for the clinical pages: roles, P(abnormal) bars, status badges, ages."""

from datetime import datetime

from django import template
from django.utils import timezone

from studies.permissions import is_admin, is_radiologist, is_staff_member

register = template.Library()

# Each status has a text label and a symbol; the colour only repeats what they already say.
STUDY_STATUS_STYLE = {
    "new": ("secondary", "○"),
    "queued": ("info", "…"),
    "processing": ("primary", "⟳"),
    "predicted": ("success", "✓"),
    "failed": ("danger", "✕"),
    "unsupported": ("warning", "?"),
    "needs_human_read": ("warning", "!"),
    "needs_body_part": ("warning", "?"),
    "reviewed": ("dark", "★"),
    "done": ("success", "✓"),
}


@register.simple_tag
def role_label(user) -> str:
    """The user's role as the navbar shows it."""
    if is_admin(user):
        return "Admin"
    if is_radiologist(user):
        return "Radiologist"
    if is_staff_member(user):
        return "Staff"
    return "No role"


@register.inclusion_tag("includes/status_badge.html")
def status_badge(status: str, display: str = "") -> dict:
    """A badge with the status's symbol and name."""
    colour, symbol = STUDY_STATUS_STYLE.get(status, ("secondary", "•"))
    return {"status": status, "display": display or status.title(), "colour": colour, "symbol": symbol}


@register.inclusion_tag("includes/prob_bar.html")
def prob_bar(
    probability: float | None,
    threshold: float | None = None,
    width: int = 90,
    low: float | None = None,
    high: float | None = None,
) -> dict:
    """P(abnormal) as a bar (an inline SVG, allowed by the CSP) with the number beside it.

    With the model's indeterminate band (`low`, `high`) the band is drawn on the track, and a
    probability inside it is filled amber, not red: it is not a call. The band's figures are
    printed too, so the bar is never the only place they are.
    """
    if probability is None:
        return {"probability": None}
    probability = min(max(float(probability), 0.0), 1.0)
    has_band = low is not None and high is not None
    if has_band:
        is_abnormal = probability >= high
        is_indeterminate = low <= probability < high
    else:
        is_abnormal = threshold is not None and probability >= threshold
        is_indeterminate = False
    return {
        "probability": probability,
        "percent": f"{probability * 100:.1f}",
        "fill_width": round(probability * width, 1),
        "threshold_x": round(threshold * width, 1) if threshold is not None else None,
        "threshold": threshold,
        "is_abnormal": is_abnormal,
        "is_indeterminate": is_indeterminate,
        "band": (
            {
                "x": round(low * width, 1),
                "width": round((high - low) * width, 1),
                "text": f"{low * 100:.0f}\N{EN DASH}{high * 100:.0f} %",
            }
            if has_band
            else None
        ),
        "width": width,
    }


@register.filter
def short_age(value: datetime | None) -> str:
    """How long ago, compactly: '45 s', '12 min', '5 h', '3 d'."""
    if value is None:
        return ""
    seconds = max(int((timezone.now() - value).total_seconds()), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


@register.filter
def percent(value: float | None, digits: int = 1) -> str:
    """0.1234 → '12.3 %'; None → '—' (undefined, e.g. no reviewed study)."""
    if value is None:
        return "—"
    return f"{value * 100:.{int(digits)}f} %"


@register.filter
def short_version(value: str | None) -> str:
    """The first 12 characters of a sha256 model version."""
    return (value or "")[:12]


@register.filter
def get_item(mapping: dict, key: str):
    """mapping[key] in a template, or the key itself when it is missing."""
    return mapping.get(key, key)


@register.filter
def label_display(value: str | None) -> str:
    """A stored label as every page shows it: "abnormal" → "Abnormal" (the API keeps the values)."""
    from studies.models import ResultLabel

    if not value:
        return "—"
    return ResultLabel(value).label if value in ResultLabel.values else str(value)
