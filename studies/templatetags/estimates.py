"""The dashboard's figures: each with its 95 % confidence interval and the number of studies behind it."""

from django import template
from django.utils.html import format_html
from django.utils.safestring import SafeString

from studies.dashboard import Estimate

register = template.Library()

EN_DASH = "\N{EN DASH}"


def _number(value: float, *, percent: bool) -> str:
    return f"{value * 100:.1f}" if percent else f"{value:.2f}"


def estimate_text(estimate: Estimate, *, percent: bool = True, count: str = "n") -> tuple[str, str, str]:
    """(figure, interval, count) as plain text, e.g. ("80.0 %", "(95 % CI 49.0 to 94.3 %)" with an en dash,
    "n = 10 abnormal studies"); `count="of"` writes "8 of 10 abnormal studies" instead."""
    if estimate.value is None:
        figure = "—"
    else:
        figure = _number(estimate.value, percent=percent) + (" %" if percent else "")
    interval = ""
    if estimate.value is not None and estimate.low is not None and estimate.high is not None:
        low, high = _number(estimate.low, percent=percent), _number(estimate.high, percent=percent)
        interval = f"(95 % CI {low}{EN_DASH}{high}{' %' if percent else ''})"
    if count == "of" and estimate.successes is not None:
        counted = f"{estimate.successes} of {estimate.counted}"
    else:
        counted = f"n = {estimate.counted}"
    return figure, interval, counted


@register.simple_tag
def estimate(
    value: Estimate | None, percent: bool = True, count: str = "n", stacked: bool = False
) -> SafeString:
    """`{% estimate summary.figures.sensitivity %}` → "80.0 % (95 % CI 49.0 to 94.3 %), n = 10 abnormal
    studies", with "only 2 reviews: too few to judge" beside a figure that rests on too few.
    `stacked`: the figure, its interval and its count on lines of their own (a table cell)."""
    if value is None:
        return format_html('<span class="estimate">{}</span>', "—")
    figure, interval, counted = estimate_text(value, percent=percent, count=count)
    few = " estimate-few" if value.too_few else ""
    caveat = (
        format_html('<span class="badge estimate-caveat">{}</span>', value.caveat) if value.caveat else ""
    )
    if value.n == 0:
        # Nothing to count: the caveat ("no review yet") says so in place of an interval and a count.
        return format_html(
            '<span class="estimate" data-n="0"><span class="fw-semibold">{}</span> '
            '<span class="small text-body-secondary">({})</span></span>',
            figure,
            value.caveat,
        )
    if stacked:
        return format_html(
            '<div class="estimate{}" data-n="{}"><div class="fw-semibold">{}</div>{}'
            '<div class="small text-body-secondary">{}</div>{}</div>',
            few,
            value.n,
            figure,
            format_html('<div class="small text-nowrap">{}</div>', interval[1:-1]) if interval else "",
            counted,
            format_html("<div>{}</div>", caveat) if caveat else "",
        )
    return format_html(
        '<span class="estimate{}" data-n="{}"><span class="fw-semibold">{}</span>{}'
        '<span class="small text-body-secondary">, {}</span>{}</span>',
        few,
        value.n,
        figure,
        format_html(' <span class="small text-nowrap">{}</span>', interval) if interval else "",
        counted,
        format_html(" {}", caveat) if caveat else "",
    )
