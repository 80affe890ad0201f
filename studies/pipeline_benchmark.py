"""Upload-to-result benchmark of a running stack, over its REST API (used by `benchmark_pipeline`).

It registers one patient, then for each upload a study holding one real radiograph, and polls
every study until its image has an outcome. Latency is measured per image, from the start of
its upload request to the first poll that sees it done, while later uploads are still going.
"""

import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm"}
FINAL_IMAGE_STATUSES = {"done", "failed", "unsupported"}
HTTP_TIMEOUT = 60


class BenchmarkError(RuntimeError):
    """The stack refused or failed a request the benchmark needs."""


@dataclass
class ImageTiming:
    study_id: int
    image_id: int
    file: str
    started: float
    uploaded: float
    finished: float | None = None
    status: str = "queued"


@dataclass
class BenchmarkResult:
    base_url: str
    uploads: int
    done: int
    failed: int
    unsupported: int
    timed_out: int
    upload_seconds_p50: float | None
    latency_seconds_p50: float | None
    latency_seconds_p95: float | None
    latency_seconds_max: float | None
    images_per_second: float | None
    wall_seconds: float
    workers: int | None
    workers_source: str
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_files(*, shared_data: Path) -> list[Path]:
    """Radiographs a wrist model can read: the 16-bit PNG wrists, then the JPEGs."""
    files = sorted((shared_data / "png16").glob("*.png")) + sorted((shared_data / "jpeg").glob("*.jpg"))
    if not files:
        raise BenchmarkError(f"no PNG or JPEG radiographs under {shared_data}")
    return files


def percentile(*, values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile (`fraction` in (0, 1]); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def count_workers(*, timeout: float = 2.0) -> tuple[int | None, str]:
    """Workers answering `celery inspect ping` on this process's broker; (None, why) if unknown."""
    from mskdetect.celery import app

    try:
        replies = app.control.ping(timeout=timeout)
    except Exception as exc:  # any transport error means "could not count", not a failed benchmark
        return (
            None,
            f"celery ping failed on {app.conf.broker_url.split('://')[0]}: {type(exc).__name__}: {exc}",
        )
    return len(replies), f"celery ping on {app.conf.broker_url.split('://')[0]} broker"


class ApiClient:
    """A token-authenticated session on the app's REST API."""

    def __init__(self, *, base_url: str, username: str, password: str) -> None:
        self.base_url = base_url.rstrip("/")
        answer = requests.post(
            self.url("/api/v1/auth/token/"),
            json={"username": username, "password": password},
            timeout=HTTP_TIMEOUT,
        )
        if answer.status_code != 200:
            raise BenchmarkError(f"login as {username!r} refused ({answer.status_code}): {answer.text[:200]}")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {answer.json()['token']}"

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def post(self, path: str, **kwargs: Any) -> dict:
        answer = self.session.post(self.url(path), timeout=HTTP_TIMEOUT, **kwargs)
        if answer.status_code != 201:
            raise BenchmarkError(f"POST {path} answered {answer.status_code}: {answer.text[:300]}")
        return answer.json()

    def get(self, path: str) -> dict:
        answer = self.session.get(self.url(path), timeout=HTTP_TIMEOUT)
        if answer.status_code != 200:
            raise BenchmarkError(f"GET {path} answered {answer.status_code}: {answer.text[:300]}")
        return answer.json()


def run_benchmark(
    *,
    base_url: str,
    username: str,
    password: str,
    uploads: int,
    files: Sequence[Path],
    body_part: str = "XR_WRIST",
    timeout: float = 600.0,
    poll_interval: float = 0.25,
    progress: Callable[[str], None] = lambda line: None,
) -> BenchmarkResult:
    """Upload `uploads` images (one study each, cycling through `files`) and time each to its result."""
    if uploads < 1:
        raise BenchmarkError("--uploads must be at least 1")
    client = ApiClient(base_url=base_url, username=username, password=password)
    workers, workers_source = count_workers()
    run_id = uuid.uuid4().hex[:10]
    patient = client.post(
        "/api/v1/patients/", json={"mrn": f"BENCH-{run_id}", "name": "Benchmark Patient", "sex": "O"}
    )
    timings: list[ImageTiming] = []
    lock = threading.Lock()
    uploads_done = threading.Event()
    errors: list[str] = []
    began = time.monotonic()

    def poll() -> None:
        deadline = began + timeout
        while time.monotonic() < deadline:
            with lock:
                pending = [timing for timing in timings if timing.finished is None]
            if not pending and uploads_done.is_set():
                return
            for timing in pending:
                try:
                    study = client.get(f"/api/v1/studies/{timing.study_id}/")
                except (BenchmarkError, requests.RequestException) as exc:
                    errors.append(f"poll study {timing.study_id}: {exc}")
                    continue
                image = next((i for i in study["images"] if i["id"] == timing.image_id), None)
                if image is not None and image["status"] in FINAL_IMAGE_STATUSES:
                    with lock:
                        timing.finished, timing.status = time.monotonic(), image["status"]
            time.sleep(poll_interval)

    poller = threading.Thread(target=poll, name="benchmark-poller", daemon=True)
    poller.start()
    try:
        for index in range(uploads):
            path = files[index % len(files)]
            study = client.post(
                "/api/v1/studies/",
                json={
                    "patient": patient["id"],
                    "accession_number": f"BENCH-{run_id}-{index:05d}",
                    "body_part": body_part,
                },
            )
            started = time.monotonic()
            with path.open("rb") as handle:
                body = client.post(
                    f"/api/v1/studies/{study['id']}/images/",
                    files=[("file", (path.name, handle, "application/octet-stream"))],
                    # Test files carry other patients' DICOM headers: the benchmark patient is made up.
                    data={"confirm_mismatch": "true", "mismatch_reason": "pipeline benchmark, test images"},
                )
            timing = ImageTiming(
                study_id=study["id"],
                image_id=body["images"][0]["id"],
                file=path.name,
                started=started,
                uploaded=time.monotonic(),
            )
            with lock:
                timings.append(timing)
            if (index + 1) % 10 == 0 or index + 1 == uploads:
                progress(f"uploaded {index + 1}/{uploads}")
    finally:
        uploads_done.set()
    poller.join(timeout=max(0.0, began + timeout - time.monotonic()) + 5)
    wall = time.monotonic() - began

    finished = [timing for timing in timings if timing.finished is not None]
    latencies = [timing.finished - timing.started for timing in finished]
    done = [timing for timing in finished if timing.status == "done"]
    span = (max(t.finished for t in done) - min(t.started for t in done)) if done else 0.0
    return BenchmarkResult(
        base_url=client.base_url,
        uploads=len(timings),
        done=len(done),
        failed=sum(1 for t in finished if t.status == "failed"),
        unsupported=sum(1 for t in finished if t.status == "unsupported"),
        timed_out=len(timings) - len(finished),
        upload_seconds_p50=_rounded(
            percentile(values=[t.uploaded - t.started for t in timings], fraction=0.5)
        ),
        latency_seconds_p50=_rounded(percentile(values=latencies, fraction=0.5)),
        latency_seconds_p95=_rounded(percentile(values=latencies, fraction=0.95)),
        latency_seconds_max=_rounded(max(latencies, default=None)),
        images_per_second=_rounded(len(done) / span) if span > 0 else None,
        wall_seconds=round(wall, 3),
        workers=workers,
        workers_source=workers_source,
        errors=errors[:20],
    )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
