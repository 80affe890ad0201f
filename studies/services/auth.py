"""API tokens."""

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from rest_framework.authtoken.models import Token

from studies.audit import audit_record


@transaction.atomic
def auth_token_issue(*, user: AbstractBaseUser, ip: str | None = None) -> str:
    """The user's API token (created on first use); each issue is audited."""
    token, created = Token.objects.get_or_create(user=user)
    audit_record(actor=user, action="auth.token_issued", obj=user, ip=ip, details={"created": created})
    return token.key
