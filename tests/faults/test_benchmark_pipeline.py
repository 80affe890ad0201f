"""`manage.py benchmark_pipeline` against a live stack (gunicorn + worker on PostgreSQL and Redis)."""

import json
import subprocess
import sys

import pytest

from studies.models import Prediction, Radiograph
from studies.pipeline_benchmark import percentile
from tests.conftest import REPO_ROOT
from tests.factories import PASSWORD


def test_percentile_is_nearest_rank():
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(values=values, fraction=0.5) == 3.0
    assert percentile(values=values, fraction=0.95) == 5.0
    assert percentile(values=[], fraction=0.5) is None


@pytest.mark.integration
def test_benchmark_uploads_real_images_and_reports_their_latency(fault_stack):
    stack = fault_stack
    stack.start_web()
    stack.start_worker()
    stack.client("bench-staff")  # the staff user the command logs in as
    done = subprocess.run(
        [sys.executable, "manage.py", "benchmark_pipeline", "--uploads", "4", "--base-url", stack.base_url,
         "--username", "bench-staff", "--password", PASSWORD, "--timeout", "240"],
        env=stack.env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stderr}\n{stack.logs()}"
    lines = done.stdout.strip().splitlines()
    figures = json.loads(lines[-1])
    assert figures["uploads"] == 4
    assert figures["done"] == 4, figures
    assert figures["timed_out"] == 0 and figures["failed"] == 0
    assert (
        0 < figures["latency_seconds_p50"] <= figures["latency_seconds_p95"] <= figures["latency_seconds_max"]
    )
    assert figures["images_per_second"] > 0
    assert figures["workers"] == 1, figures
    assert any(line.startswith("Upload→result latency: p50") for line in lines)
    # It really went through the pipeline: four images, one prediction each.
    images = Radiograph.objects.filter(study__accession_number__startswith="BENCH-")
    assert images.count() == 4
    assert Prediction.objects.filter(radiograph__in=images).count() == 4
