"""Template helpers for validation cards: the compact card beside a result, and the ROC plot.

Both are drawn on the server (text and an inline SVG with classes, no style attributes), which is
all the Content-Security-Policy allows.
"""

from typing import Any

from django import template

from studies import selectors
from studies.model_cards import NOT_VALIDATED, model_card_data

register = template.Library()

ROC_SIZE = 200  # the plot area, in SVG units
ROC_LEFT, ROC_TOP, ROC_BOTTOM = 34, 8, 30
RANGE_DASH = "\N{EN DASH}"


def _number(value: float | None, *, percent: bool) -> str:
    if value is None:
        return "—"
    return f"{value * 100:.1f}" if percent else f"{value:.2f}"


def figure_text(figure: dict[str, float | None] | None, *, percent: bool = False) -> str:
    """A figure and its interval, e.g. '0.71 (0.67 to 0.75)' in figures or percent; '—' when undefined.

    The interval is written with an en dash, as in print.
    """
    figure = figure or {}
    value = figure.get("value")
    if value is None:
        return "—"
    unit = " %" if percent else ""
    text = f"{_number(value, percent=percent)}{unit}"
    low, high = figure.get("low"), figure.get("high")
    if low is not None and high is not None:
        text += f" ({_number(low, percent=percent)}{RANGE_DASH}{_number(high, percent=percent)}{unit})"
    return text


def _display(summary: dict[str, Any]) -> dict[str, Any]:
    if not summary.get("validated"):
        return {"validated": False, "notice": summary.get("notice") or NOT_VALIDATED}
    studies = summary.get("studies")
    threshold = summary.get("threshold")
    return {
        "validated": True,
        "set": summary.get("set") or "an unnamed set",
        "date": summary.get("date") or "undated",
        "studies": f"{studies:,}" if isinstance(studies, int) else "?",
        "threshold": f"{threshold:.2f}" if isinstance(threshold, int | float) else "?",
        "kappa": figure_text(summary.get("kappa")),
        "auroc": figure_text(summary.get("auroc")),
        "sensitivity": figure_text(summary.get("sensitivity"), percent=True),
        "specificity": figure_text(summary.get("specificity"), percent=True),
        "ci": summary.get("ci") or "",
    }


@register.inclusion_tag("includes/model_card.html")
def model_card(summary: dict[str, Any] | None, compact: bool = False) -> dict[str, Any]:
    """A result's validation card (the API's `model_card` object) as one sentence, or the marker."""
    return {"card": _display(summary or model_card_data(None)), "compact": compact}


@register.inclusion_tag("includes/model_card.html")
def prediction_model_card(prediction) -> dict[str, Any]:
    """The compact card of the model version that made one image's prediction."""
    return {"card": _display(model_card_data(selectors.prediction_card(prediction))), "compact": True}


@register.filter
def card_summary(card: dict[str, Any] | None) -> dict[str, Any]:
    """A stored card → the API's `model_card` object (for `{% model_card %}`)."""
    return model_card_data(card)


@register.inclusion_tag("includes/roc_plot.html")
def roc_plot(card: dict[str, Any] | None, plot_id: str) -> dict[str, Any]:
    """The card's ROC curve as an inline SVG (false-positive rate across, true-positive rate up)."""
    roc = (card or {}).get("roc") or {}
    fpr, tpr = roc.get("fpr") or [], roc.get("tpr") or []
    if not fpr or len(fpr) != len(tpr):
        return {"points": "", "plot_id": plot_id}
    size = ROC_SIZE
    points = " ".join(
        f"{ROC_LEFT + x * size:.1f},{ROC_TOP + (1 - y) * size:.1f}" for x, y in zip(fpr, tpr, strict=True)
    )
    auroc = ((card or {}).get("metrics") or {}).get("auroc") or {}
    ticks = [
        {"value": f"{tick:g}", "x": ROC_LEFT + tick * size, "y": ROC_TOP + (1 - tick) * size}
        for tick in (0, 0.5, 1)
    ]
    return {
        "plot_id": plot_id,
        "points": points,
        "auroc": figure_text(auroc),
        "left": ROC_LEFT,
        "top": ROC_TOP,
        "right": ROC_LEFT + size,
        "bottom": ROC_TOP + size,
        "size": size,
        "width": ROC_LEFT + size + 8,
        "height": ROC_TOP + size + ROC_BOTTOM,
        "ticks": ticks,
        "label_x": ROC_LEFT + size / 2,
        "label_y": ROC_TOP + size + 26,
        "tick_label_y": ROC_TOP + size + 12,
        "axis_label_x": 10,
        "axis_label_y": ROC_TOP + size / 2,
    }
