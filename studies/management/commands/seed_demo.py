"""Create the demo users (staff, radiologist, admin) for development, once."""

import os
import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

DEMO_USERS = (("staff", "staff"), ("radiologist", "radiologist"), ("admin", "admin"))


class Command(BaseCommand):
    help = (
        "Development only: create the users staff, radiologist and admin when absent. The password "
        "comes from MSKDETECT_PASSWORD, else one is generated, printed once and kept in "
        "<data dir>/demo-password.txt."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--force", action="store_true", help="run even with DEBUG off (never on a real deployment)"
        )

    def handle(self, *args, force: bool = False, **options) -> None:
        if not settings.DEBUG and not force:
            raise CommandError("seed_demo is for development (DEBUG on); use `manage.py adduser` instead.")
        User = get_user_model()
        missing = [
            (name, role) for name, role in DEMO_USERS if not User.objects.filter(username=name).exists()
        ]
        if not missing:
            self.stdout.write("Demo users present: " + ", ".join(name for name, _ in DEMO_USERS))
            return
        password, source = self._password()
        previous = os.environ.get("MSKDETECT_PASSWORD")
        # adduser reads the password from the environment, so it is never on a command line.
        os.environ["MSKDETECT_PASSWORD"] = password
        try:
            for name, role in missing:
                call_command("adduser", name, role=role, stdout=self.stdout, stderr=self.stderr)
        finally:
            if previous is None:
                os.environ.pop("MSKDETECT_PASSWORD", None)
            else:
                os.environ["MSKDETECT_PASSWORD"] = previous
        self.stdout.write(
            self.style.WARNING(
                f"Created demo users {', '.join(name for name, _ in missing)} with password {password!r} "
                f"({source}). Development only."
            )
        )

    def _password(self) -> tuple[str, str]:
        if os.environ.get("MSKDETECT_PASSWORD"):
            return os.environ["MSKDETECT_PASSWORD"], "from MSKDETECT_PASSWORD"
        keep = Path(settings.DATA_DIR) / "demo-password.txt"
        if keep.is_file():
            return keep.read_text().strip(), f"kept in {keep}"
        password = secrets.token_urlsafe(12)
        keep.parent.mkdir(parents=True, exist_ok=True)
        keep.write_text(password + "\n")
        keep.chmod(0o600)
        return password, f"generated, kept in {keep}"
