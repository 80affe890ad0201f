"""Roles: groups `staff` and `radiologist`; admins are superusers.

Radiologists can do everything staff can. Admins (superusers) can use every staff feature
and the audit log, but a review is a radiologist's ruling, so an admin reviews only when
also in the `radiologist` group.
"""

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from rest_framework.permissions import BasePermission

STAFF_GROUP = "staff"
RADIOLOGIST_GROUP = "radiologist"

User = AbstractBaseUser | AnonymousUser


def _group_names(user: User) -> frozenset[str]:
    # Cached on the user object: a request asks several times, the database once.
    cached = getattr(user, "_mskdetect_groups", None)
    if cached is None:
        cached = frozenset(user.groups.values_list("name", flat=True))
        user._mskdetect_groups = cached
    return cached


def _is_active(user: User | None) -> bool:
    return bool(user is not None and user.is_authenticated and user.is_active)


def is_admin(user: User | None) -> bool:
    """A superuser: the Django admin and the audit log."""
    return _is_active(user) and bool(user.is_superuser)


def is_radiologist(user: User | None) -> bool:
    """May confirm or override a model's result."""
    return _is_active(user) and RADIOLOGIST_GROUP in _group_names(user)


def is_staff_member(user: User | None) -> bool:
    """May see and register patients, studies and images (staff, radiologists, admins)."""
    if not _is_active(user):
        return False
    return bool(user.is_superuser) or bool(_group_names(user) & {STAFF_GROUP, RADIOLOGIST_GROUP})


class IsStaffMember(BasePermission):
    message = "This needs the staff or radiologist role."

    def has_permission(self, request, view) -> bool:
        return is_staff_member(request.user)


class IsRadiologist(BasePermission):
    message = "Only radiologists may review studies."

    def has_permission(self, request, view) -> bool:
        return is_radiologist(request.user)


class IsAdmin(BasePermission):
    message = "Only administrators may do this."

    def has_permission(self, request, view) -> bool:
        return is_admin(request.user)
