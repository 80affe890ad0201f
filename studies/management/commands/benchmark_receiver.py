"""`manage.py benchmark_receiver --instances 200`: how many instances per second the DICOM receiver files.

Runs on a scratch database (a temporary SQLite file by default, or `--database-url` of an empty
dedicated one), a scratch media folder and a scratch filesystem queue, in a child process, so the
configured database, media and broker are never touched. Prints the figures, then one JSON line.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

CHILD_FLAG = "MSKDETECT_BENCHMARK_SCRATCH"


class Command(BaseCommand):
    help = __doc__.splitlines()[0]

    def add_arguments(self, parser) -> None:
        parser.add_argument("--instances", type=int, default=200, help="instances sent in one association")
        parser.add_argument(
            "--sender",
            choices=["storescu", "pynetdicom"],
            default=None,
            help="default: DCMTK's storescu when installed, else pynetdicom",
        )
        parser.add_argument(
            "--database-url",
            default="",
            help="a dedicated, empty scratch database (default: a temporary SQLite file)",
        )

    def handle(self, *args, instances: int, sender: str | None, database_url: str, **options) -> None:
        if instances < 1:
            raise CommandError("--instances must be at least 1")
        if os.environ.get(CHILD_FLAG) == "1":
            self._run(instances=instances, sender=sender)
            return
        with tempfile.TemporaryDirectory(prefix="mskdetect-bench-") as scratch:
            for folder in ("broker", "test-broker"):  # the filesystem queue of local and test settings
                for sub in ("", "processed", "control"):
                    (Path(scratch) / folder / sub).mkdir(parents=True, exist_ok=True)
            env = dict(os.environ)
            env.update(
                {
                    CHILD_FLAG: "1",
                    "DATABASE_URL": database_url or f"sqlite:///{Path(scratch) / 'bench.sqlite3'}",
                    "CELERY_BROKER_URL": "filesystem://",
                    "MSKDETECT_DATA_DIR": scratch,
                    "MEDIA_ROOT": str(Path(scratch) / "media"),
                    "DJANGO_SETTINGS_MODULE": os.environ.get(
                        "DJANGO_SETTINGS_MODULE", "mskdetect.settings.local"
                    ),
                    "DJANGO_DEBUG": "false",
                    "LOG_LEVEL": "WARNING",
                }
            )
            command = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "benchmark_receiver"]
            command += ["--instances", str(instances)] + (["--sender", sender] if sender else [])
            done = subprocess.run(command, env=env, check=False)
            if done.returncode:
                raise CommandError(f"benchmark failed (exit status {done.returncode})")

    def _run(self, *, instances: int, sender: str | None) -> None:
        import logging

        from studies.models import Study
        from studies.receiver_benchmark import run_benchmark

        call_command("migrate", verbosity=0, interactive=False)
        if Study.objects.exists():
            raise CommandError("the scratch database already holds studies: give an empty, dedicated one")
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        result = run_benchmark(instances=instances, sender=sender)
        self.stdout.write(
            f"DICOM receiver, {result.database} scratch database, sender {result.sender}, "
            f"{result.bytes_per_instance} bytes per instance:"
        )
        for name, figures in (("first send", result.first), ("sent again", result.again)):
            self.stdout.write(
                f"  {name:<11} {figures.instances} instances in {figures.seconds:.2f} s = "
                f"{figures.instances_per_second:.1f} instances/s "
                f"({figures.answered_success} answered success)"
            )
        verdict = "yes" if result.every_instance_stored_once else "NO"
        self.stdout.write(
            f"  stored {result.stored}, distinct SOP Instance UIDs {result.distinct_sop_instance_uids}, "
            f"duplicates {result.duplicates_counted}, refused {result.refused_counted}: "
            f"every instance stored once: {verdict}"
        )
        self.stdout.write(json.dumps(result.as_dict()))
        if not result.every_instance_stored_once:
            raise CommandError("not every instance was stored exactly once")
