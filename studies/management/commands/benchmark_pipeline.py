"""`manage.py benchmark_pipeline --uploads N`: upload→result latency and throughput of a running stack.

Talks to the stack over HTTP only (default http://127.0.0.1:8000, as `make run` serves it) as a
staff user; the default user is `make run`'s demo `staff`, whose password comes from --password,
$MSKDETECT_PASSWORD or <data dir>/demo-password.txt. Workers are counted with `celery inspect
ping` on this process's CELERY_BROKER_URL. The last line printed is a JSON object of the figures.
"""

import json
import os
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from inference.shared_data import SharedDataNotFound, locate_shared_data
from studies.models import BodyPart
from studies.pipeline_benchmark import BenchmarkError, default_files, run_benchmark


class Command(BaseCommand):
    help = "Upload N real radiographs to a running stack and report upload→result latency and images/s."

    def add_arguments(self, parser):
        parser.add_argument("--uploads", type=int, required=True, help="Number of images to upload.")
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")
        parser.add_argument("--username", default="staff", help="A user with the staff role.")
        parser.add_argument("--password", default=None)
        parser.add_argument(
            "--files",
            nargs="+",
            type=Path,
            default=None,
            help="Radiographs to upload (cycled); default ../shared/data.",
        )
        parser.add_argument("--body-part", default=BodyPart.WRIST, choices=BodyPart.values)
        parser.add_argument("--timeout", type=float, default=600.0, help="Seconds to wait for all results.")

    def handle(self, *args, uploads: int, base_url: str, username: str, password: str | None, **options):
        files = options["files"] or self._default_files()
        missing = [str(path) for path in files if not path.is_file()]
        if missing:
            raise CommandError(f"not a file: {', '.join(missing)}")
        try:
            result = run_benchmark(
                base_url=base_url,
                username=username,
                password=password or self._password(),
                uploads=uploads,
                files=files,
                body_part=options["body_part"],
                timeout=options["timeout"],
                progress=lambda line: self.stderr.write(line),
            )
        except BenchmarkError as exc:
            raise CommandError(str(exc)) from exc
        figures = result.as_dict()
        self.stdout.write(f"Stack: {result.base_url}")
        self.stdout.write(f"Workers: {_text(result.workers)} ({result.workers_source})")
        self.stdout.write(
            f"Images: {result.uploads} uploaded, {result.done} done, {result.failed} failed, "
            f"{result.unsupported} unsupported, {result.timed_out} without a result in time"
        )
        self.stdout.write(f"Upload request p50: {_text(result.upload_seconds_p50)} s")
        self.stdout.write(
            f"Upload→result latency: p50 {_text(result.latency_seconds_p50)} s, "
            f"p95 {_text(result.latency_seconds_p95)} s, max {_text(result.latency_seconds_max)} s"
        )
        self.stdout.write(
            f"Throughput: {_text(result.images_per_second)} images/s over {result.wall_seconds} s"
        )
        for error in result.errors:
            self.stderr.write(f"error: {error}")
        self.stdout.write(json.dumps(figures, sort_keys=True))

    def _default_files(self) -> list[Path]:
        try:
            return default_files(shared_data=locate_shared_data())
        except (BenchmarkError, SharedDataNotFound) as exc:
            raise CommandError(str(exc)) from exc

    def _password(self) -> str:
        if os.environ.get("MSKDETECT_PASSWORD"):
            return os.environ["MSKDETECT_PASSWORD"]
        demo = Path(settings.DATA_DIR) / "demo-password.txt"
        if demo.is_file():
            return demo.read_text(encoding="utf-8").strip()
        raise CommandError("no password: pass --password or set MSKDETECT_PASSWORD")


def _text(value: object) -> str:
    return "n/a" if value is None else str(value)
