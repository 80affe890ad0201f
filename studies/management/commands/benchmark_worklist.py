"""`manage.py benchmark_worklist --studies 10000`: does a worklist page cost the same at any size?

Fills a scratch database (a temporary SQLite file by default, never the configured one) with
studies in every state, then reports, at 100 studies and at `--studies` studies, the number of
SQL queries and the median milliseconds of one worklist page: the API (`GET /api/v1/studies/`)
and the HTML worklist (`/`), fetched by a logged-in staff user through Django's test client.
Target: the same query count at both sizes, and a time ratio of at most 1.5.
"""

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

CHILD_FLAG = "MSKDETECT_BENCHMARK_SCRATCH"
SMALL = 100
VERSION = "0" * 63 + "1"
BAND = (0.35, 0.65)


class Command(BaseCommand):
    help = __doc__.splitlines()[0]

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--studies", type=int, default=10_000, help="size of the large run (default 10000)"
        )
        parser.add_argument("--repeat", type=int, default=15, help="timed fetches per page (median reported)")
        parser.add_argument(
            "--database-url",
            default="",
            help="a dedicated, empty scratch database to fill (default: a temporary SQLite file)",
        )

    def handle(self, *args, studies: int, repeat: int, database_url: str, **options) -> None:
        if studies <= SMALL:
            raise CommandError(f"--studies must be more than {SMALL}")
        if os.environ.get(CHILD_FLAG) == "1":
            self._run(studies=studies, repeat=repeat)
            return
        # The measurement runs in a child process whose settings point at the scratch database,
        # so the configured database is never touched.
        with tempfile.TemporaryDirectory(prefix="mskdetect-bench-") as scratch:
            env = dict(os.environ)
            env.update(
                {
                    CHILD_FLAG: "1",
                    "DATABASE_URL": database_url or f"sqlite:///{Path(scratch) / 'bench.sqlite3'}",
                    "MSKDETECT_DATA_DIR": scratch,
                    "MEDIA_ROOT": str(Path(scratch) / "media"),
                    "DJANGO_SETTINGS_MODULE": os.environ.get(
                        "DJANGO_SETTINGS_MODULE", "mskdetect.settings.local"
                    ),
                    "DJANGO_DEBUG": "false",
                }
            )
            command = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "benchmark_worklist"]
            command += ["--studies", str(studies), "--repeat", str(repeat)]
            done = subprocess.run(command, env=env, check=False)
            if done.returncode:
                raise CommandError(f"benchmark failed (exit status {done.returncode})")

    def _run(self, *, studies: int, repeat: int) -> None:
        from studies.models import Study

        call_command("migrate", verbosity=0, interactive=False)
        if Study.objects.exists():
            raise CommandError("the scratch database already holds studies: give an empty, dedicated one")
        client = _staff_client()
        pages = _pages()
        self.stdout.write(f"Database: {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]} (scratch)")
        results: dict[int, dict[str, tuple[int, float]]] = {}
        for size in (SMALL, studies):
            started = time.perf_counter()
            _fill(total=size)
            self.stdout.write(f"Filled {size} studies in {time.perf_counter() - started:.1f} s")
            results[size] = {
                name: _measure(client=client, url=url, repeat=repeat) for name, url in pages.items()
            }
        self.stdout.write("")
        self.stdout.write(f"{'page':<6} {'studies':>8} {'queries':>8} {'ms/page':>9}")
        for name in pages:
            for size in (SMALL, studies):
                queries, ms = results[size][name]
                self.stdout.write(f"{name:<6} {size:>8} {queries:>8} {ms:>9.1f}")
        self.stdout.write("")
        ok = True
        for name in pages:
            (small_queries, small_ms), (large_queries, large_ms) = (
                results[SMALL][name],
                results[studies][name],
            )
            ratio = large_ms / small_ms if small_ms else float("inf")
            same = small_queries == large_queries
            verdict = "OK" if same and ratio <= 1.5 else "OVER TARGET"
            ok = ok and verdict == "OK"
            self.stdout.write(
                f"{name}: queries {small_queries} -> {large_queries} ({'same' if same else 'DIFFERENT'}), "
                f"time ratio {ratio:.2f} (target <= 1.5): {verdict}"
            )
        if not ok:
            self.stdout.write(self.style.WARNING("At least one page misses the target."))


def _pages() -> dict[str, str]:
    from django.urls import NoReverseMatch, reverse

    pages = {"api": reverse("api:study-list")}
    with contextlib.suppress(NoReverseMatch):  # the HTML worklist may not be installed
        pages["html"] = reverse("worklist")
    return pages


def _staff_client():
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.test import Client

    from studies.permissions import STAFF_GROUP

    user = get_user_model().objects.create_user(username="benchmark-staff", password=None)
    user.groups.add(Group.objects.get_or_create(name=STAFF_GROUP)[0])
    # The host is one ALLOWED_HOSTS names: this is not a test run, so "testserver" is not added.
    client = Client(HTTP_HOST="localhost")
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    return client


def _measure(*, client, url: str, repeat: int) -> tuple[int, float]:
    from django.db import connection, reset_queries
    from django.test.utils import CaptureQueriesContext

    # Each request empties the query log, so counting starts from an empty log.
    reset_queries()
    with CaptureQueriesContext(connection) as queries:
        answer = client.get(url)
    # Read now: the captured list is a view on the log, which the next request empties.
    query_count = len(queries)
    if answer.status_code != 200:
        raise CommandError(f"GET {url} answered {answer.status_code}")
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        answer = client.get(url)
        answer.content  # noqa: B018 - render the whole page, as a browser would receive it
        timings.append((time.perf_counter() - started) * 1000)
    return query_count, statistics.median(timings)


def _fill(*, total: int) -> None:
    """Add studies up to `total`, in the states a busy worklist holds, with bulk inserts."""
    from django.contrib.auth import get_user_model

    from studies.models import (
        BodyPart,
        ImageStatus,
        Label,
        Patient,
        Prediction,
        Radiograph,
        Review,
        Study,
        StudyResult,
        StudyStatus,
    )
    from studies.services.predictions import result_label
    from studies.services.worklist import worklist_rank

    start = Study.objects.count()
    if start >= total:
        return
    radiologist = get_user_model().objects.get_or_create(username="benchmark-radiologist")[0]
    numbers = range(start, total)
    patients = Patient.objects.bulk_create(
        [Patient(mrn=f"BENCH-{n:07d}", name=f"Patient {n:07d}") for n in numbers], batch_size=2000
    )
    body_parts = BodyPart.values
    # Every 10th study is waiting, every 10th failed, the rest predicted; a third of those reviewed.
    cycle = (
        [StudyStatus.QUEUED, StudyStatus.FAILED] + [StudyStatus.PREDICTED] * 5 + [StudyStatus.REVIEWED] * 3
    )
    studies = Study.objects.bulk_create(
        [
            Study(
                patient=patient,
                accession_number=f"BENCH-ACC-{n:07d}",
                body_part=body_parts[n % len(body_parts)],
                status=cycle[n % len(cycle)],
            )
            for n, patient in zip(numbers, patients, strict=True)
        ],
        batch_size=2000,
    )
    image_status = {
        StudyStatus.QUEUED: ImageStatus.QUEUED,
        StudyStatus.FAILED: ImageStatus.FAILED,
        StudyStatus.PREDICTED: ImageStatus.DONE,
        StudyStatus.REVIEWED: ImageStatus.DONE,
    }
    images = Radiograph.objects.bulk_create(
        [
            Radiograph(
                study=study,
                file=f"radiographs/{study.pk}/bench.png",
                sha256=f"{study.pk:064x}",
                format="png",
                width=512,
                height=512,
                status=image_status[study.status],
                error="The PNG file is truncated or corrupt." if study.status == StudyStatus.FAILED else "",
            )
            for study in studies
        ],
        batch_size=2000,
    )
    done = [(study, image) for study, image in zip(studies, images, strict=True) if image.status == "done"]

    def probability(study) -> float:
        return (study.pk * 37 % 100) / 100

    def label(study) -> str:
        # The shipped band, so about a third of the results are indeterminate.
        return result_label(probability(study), threshold=0.5, indeterminate=BAND)

    def final_label(study) -> str:
        return label(study) if label(study) in Label.values else Label.ABNORMAL

    Prediction.objects.bulk_create(
        [
            Prediction(
                radiograph=image,
                model_name="bench",
                body_part=study.body_part,
                model_version=VERSION,
                abnormal_probability=probability(study),
                label=label(study),
                threshold=0.5,
                indeterminate_low=BAND[0],
                indeterminate_high=BAND[1],
                preprocessing="seed",
            )
            for study, image in done
        ],
        batch_size=2000,
    )
    StudyResult.objects.bulk_create(
        [
            StudyResult(
                study=study,
                abnormal_probability=probability(study),
                label=label(study),
                threshold=0.5,
                indeterminate_low=BAND[0],
                indeterminate_high=BAND[1],
                model_name="bench",
                model_version=VERSION,
            )
            for study, _ in done
        ],
        batch_size=2000,
    )
    Review.objects.bulk_create(
        [
            Review(
                study=study,
                radiologist=radiologist,
                # An indeterminate result is ruled on; a call is confirmed.
                decision="confirm" if label(study) in Label.values else "rule",
                final_label=final_label(study),
                model_label=label(study),
                model_version=VERSION,
            )
            for study, _ in done
            if study.status == StudyStatus.REVIEWED
        ],
        batch_size=2000,
    )
    # The worklist sort key, as studies.services.worklist keeps it (bulk_create skips services).
    for study, _ in done:
        study.worklist_probability = probability(study)
        study.worklist_rank = worklist_rank(label=label(study), reviewed=study.status == StudyStatus.REVIEWED)
    Study.objects.bulk_update(
        [study for study, _ in done], ["worklist_rank", "worklist_probability"], batch_size=2000
    )
