"""The validation card as the API and the pages show it beside a result (a stored card → one shape).

The stored card (inference.model_card, schema 1) holds more than a reader of one result needs
(the set's path, the ROC points); `model_card_data` keeps what says how far to trust the result.
"""

from typing import Any

NOT_VALIDATED = "not validated here"
METRICS = ("kappa", "auroc", "sensitivity", "specificity")


def model_card_data(card: dict[str, Any] | None) -> dict[str, Any]:
    """The `model_card` object: the card's summary, or `{"validated": false, "notice": …}` without one."""
    if not card:
        return {"validated": False, "notice": NOT_VALIDATED}
    validated_on = card.get("validated_on") or {}
    metrics = card.get("metrics") or {}
    return {
        "validated": True,
        "set": validated_on.get("set"),
        "date": validated_on.get("date"),
        "studies": validated_on.get("studies"),
        "threshold": card.get("threshold"),
        **{name: _figure(metrics.get(name)) for name in METRICS},
        "ci": card.get("ci"),
    }


def _figure(figure: Any) -> dict[str, float | None]:
    figure = figure if isinstance(figure, dict) else {}
    return {key: figure.get(key) for key in ("value", "low", "high")}
