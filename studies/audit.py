"""The audit trail: every clinical write and every view of a study records one event."""

from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import models

from studies.models import AuditEvent, Study


def audit_record(
    *,
    actor: AbstractBaseUser | AnonymousUser | None,
    action: str,
    obj: models.Model,
    study: Study | None = None,
    ip: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event; call it inside the service's transaction so both commit or neither."""
    user = actor if actor is not None and actor.is_authenticated else None
    if study is None and isinstance(obj, Study):
        study = obj
    return AuditEvent.objects.create(
        actor=user,
        actor_username=user.get_username() if user else "",
        action=action,
        object_type=obj._meta.label_lower,
        object_id=str(obj.pk),
        study=study,
        ip_address=ip or None,
        details=details or {},
    )


def request_ip(request: Any) -> str | None:
    """The client address to record: REMOTE_ADDR (the proxy in front sets it from the peer)."""
    return request.META.get("REMOTE_ADDR") or None
