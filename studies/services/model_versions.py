"""Writes to the model-version records: what each model version is, and its validation card.

Called by the inference worker (inference/tasks.py, when it stores predictions) and by
`install_model`; both may run many times for one version, so the record is an idempotent upsert.
"""

import re
from datetime import UTC, datetime
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from studies.audit import audit_record
from studies.errors import ApplicationError
from studies.models import BodyPart, ModelVersion

_SHA256 = re.compile(r"[0-9a-f]{64}")
_DESCRIPTION_FIELDS = ("model_name", "body_part", "demo", "threshold")


def model_version_record(
    *,
    version: str,
    name: str,
    body_part: str,
    demo: bool,
    threshold: float,
    card: dict[str, Any] | None,
    actor: AbstractBaseUser | AnonymousUser | None = None,
) -> ModelVersion:
    """Create or update the record of one model version; returns it.

    Safe to call on every batch: nothing is written (or audited) when nothing changed. The
    name, body part, demo flag and threshold follow the latest call (the manifest may change
    them for the same file). `card` replaces the stored card only when it is newer (its
    `created_at`); None never removes one, so a worker that cannot read the card file does not
    erase what `install_model` stored.
    """
    _check(version=version, body_part=body_part, threshold=threshold, card=card)
    wanted = {"model_name": name, "body_part": body_part, "demo": bool(demo), "threshold": float(threshold)}
    with transaction.atomic():
        record = ModelVersion.objects.select_for_update().filter(version=version).first()
        if record is None:
            record = _create(version=version, wanted=wanted, card=card, actor=actor)
            if record is not None:
                return record
            # Another worker created it between our read and our insert: update that row instead.
            record = ModelVersion.objects.select_for_update().get(version=version)
        changed = [field for field in _DESCRIPTION_FIELDS if getattr(record, field) != wanted[field]]
        for field in changed:
            setattr(record, field, wanted[field])
        if card is not None and _is_newer(card, than=record.card):
            record.card = card
            record.card_updated = timezone.now()
            changed += ["card", "card_updated"]
        if changed:
            record.save(update_fields=changed)
            audit_record(
                actor=actor,
                action="model_version.updated",
                obj=record,
                details={"version": version, "fields": changed, **_summary(record)},
            )
    return record


def _create(
    *, version: str, wanted: dict[str, Any], card: dict[str, Any] | None, actor
) -> ModelVersion | None:
    try:
        # A savepoint, so a lost race leaves the outer transaction usable.
        with transaction.atomic():
            record = ModelVersion.objects.create(
                version=version,
                card=card,
                card_updated=timezone.now() if card is not None else None,
                **wanted,
            )
    except IntegrityError:
        if ModelVersion.objects.filter(version=version).exists():
            return None
        raise
    audit_record(
        actor=actor,
        action="model_version.recorded",
        obj=record,
        details={"version": version, **_summary(record)},
    )
    return record


def _summary(record: ModelVersion) -> dict[str, Any]:
    return {
        "model_name": record.model_name,
        "body_part": record.body_part,
        "demo": record.demo,
        "threshold": record.threshold,
        "validated": record.card is not None,
        "card_created_at": record.card.get("created_at") if record.card else None,
    }


def _check(*, version: str, body_part: str, threshold: float, card: dict[str, Any] | None) -> None:
    if not _SHA256.fullmatch(version or ""):
        raise ApplicationError(f"A model version is a lower-case sha256 (64 hex digits), not {version!r}.")
    if body_part not in BodyPart.values:
        raise ApplicationError(
            f"Unknown body part {body_part!r}; expected one of {', '.join(BodyPart.values)}."
        )
    if not 0.0 <= float(threshold) <= 1.0:
        raise ApplicationError(f"The threshold {threshold} is outside [0, 1].")
    if card is not None and card.get("model_version") != version:
        # A card is evidence about one file: never attach it to another.
        raise ApplicationError(
            f"The validation card is for model version {card.get('model_version')!r}, not {version}."
        )


def _is_newer(card: dict[str, Any], *, than: dict[str, Any] | None) -> bool:
    if than is None:
        return True
    new, old = _created_at(card), _created_at(than)
    if new is None or old is None:
        # Undated cards cannot be ordered: a different card is taken as the newer evidence.
        return card != than
    return new > old


def _created_at(card: dict[str, Any]) -> datetime | None:
    try:
        value = datetime.fromisoformat(str(card.get("created_at")))
    except ValueError:
        return None
    # Cards are written in UTC; a naive stamp is read as UTC so the two can be compared.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


__all__ = ["model_version_record"]
