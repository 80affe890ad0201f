"""`manage.py adduser NAME --role staff|radiologist|admin`: create (or --update) a user in a role."""

import getpass
import os

from django.contrib.auth import get_user_model, password_validation
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from studies.permissions import RADIOLOGIST_GROUP, STAFF_GROUP

ROLES = ("staff", "radiologist", "admin")
PASSWORD_ENV = "MSKDETECT_PASSWORD"


class Command(BaseCommand):
    help = (
        "Create a user in a role (staff, radiologist or admin). The password comes from "
        f"${PASSWORD_ENV} when set, else from a prompt."
    )

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--role", required=True, choices=ROLES)
        parser.add_argument("--email", default="")
        parser.add_argument(
            "--update", action="store_true", help="Change the role and password of an existing user."
        )

    def handle(self, *args, username: str, role: str, email: str, update: bool, **options):
        User = get_user_model()
        existing = User.objects.filter(username=username).first()
        if existing and not update:
            raise CommandError(
                f"User '{username}' already exists; pass --update to change its role or password."
            )
        user = existing or User(username=username, email=email)
        password = self._password(user)
        with transaction.atomic():
            user.set_password(password)
            user.is_active = True
            # An admin is a superuser (Django admin, audit log); clinical roles are groups.
            user.is_superuser = user.is_staff = role == "admin"
            if email:
                user.email = email
            user.save()
            groups = {
                "staff": [STAFF_GROUP],
                "radiologist": [RADIOLOGIST_GROUP],
                "admin": [],
            }[role]
            roles = Group.objects.filter(name__in=[STAFF_GROUP, RADIOLOGIST_GROUP])
            user.groups.remove(*roles)
            for name in groups:
                user.groups.add(Group.objects.get_or_create(name=name)[0])
        verb = "Updated" if existing else "Created"
        self.stdout.write(self.style.SUCCESS(f"{verb} user '{username}' with role {role}."))

    def _password(self, user) -> str:
        password = os.environ.get(PASSWORD_ENV)
        if password is None:
            password = getpass.getpass(f"Password for {user.username}: ")
            if password != getpass.getpass("Password (again): "):
                raise CommandError("The passwords do not match.")
        if not password:
            raise CommandError("The password must not be empty.")
        try:
            password_validation.validate_password(password, user)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        return password
