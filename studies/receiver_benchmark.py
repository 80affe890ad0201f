"""How fast the DICOM receiver files instances: `manage.py benchmark_receiver --instances 200`.

A DicomReceiver (studies.dicom_receiver) runs in this process on a free local port; N copies of a
small real radiograph (the shared 16 x 16 CR, as a hand so that each instance is also queued for
the worker: the broker publish is part of the cost), with new SOP Instance UIDs in one study, are
written to a temporary folder and sent in one association: by DCMTK's storescu when it is on the
PATH (one call, as fast as it sends), else by a pynetdicom SCU. Then the same instances are sent
again: every one must be answered as a duplicate and change nothing. Reported: instances per second
for both passes, and whether every instance was stored exactly once.
"""

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from inference.shared_data import locate_shared_data

SOURCE = "dicom/CR1_6154_noext"
AE_TITLE = "MSKDETECT"
CALLING_AE = "BENCHSCU"


@dataclass(frozen=True)
class PassFigures:
    instances: int
    seconds: float
    instances_per_second: float
    answered_success: int


@dataclass(frozen=True)
class ReceiverBenchmark:
    sender: str
    database: str
    bytes_per_instance: int
    first: PassFigures
    again: PassFigures
    stored: int
    distinct_sop_instance_uids: int
    duplicates_counted: int
    refused_counted: int

    @property
    def every_instance_stored_once(self) -> bool:
        return self.stored == self.distinct_sop_instance_uids == self.first.instances

    def as_dict(self) -> dict:
        return {**asdict(self), "every_instance_stored_once": self.every_instance_stored_once}


def write_instances(folder: Path, count: int) -> tuple[list[Path], str]:
    """`count` copies of the small shared CR, one study, each with its own SOP Instance UID."""
    source = pydicom.dcmread(locate_shared_data() / SOURCE)
    study, series = generate_uid(), generate_uid()
    paths = []
    for number in range(count):
        source.StudyInstanceUID, source.SeriesInstanceUID = study, series
        source.SOPInstanceUID = source.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        source.InstanceNumber = number + 1
        source.AccessionNumber = "BENCH-RX"
        source.BodyPartExamined, source.StudyDescription, source.SeriesDescription = "HAND", "XR HAND", "PA"
        path = folder / f"{number:05d}.dcm"
        source.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths, study


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def send(paths: list[Path], *, port: int, sender: str) -> tuple[float, int]:
    """Send every file in one association; returns (seconds, instances answered with success)."""
    started = time.perf_counter()
    if sender == "storescu":
        done = subprocess.run(
            [
                "storescu",
                "-v",
                "-aet",
                CALLING_AE,
                "-aec",
                AE_TITLE,
                "127.0.0.1",
                str(port),
                *map(str, paths),
            ],
            capture_output=True,
            text=True,
            timeout=3600,
        )
        return time.perf_counter() - started, (done.stdout + done.stderr).count(
            "Received Store Response (Success)"
        )
    from pynetdicom import AE
    from pynetdicom.sop_class import ComputedRadiographyImageStorage

    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(ComputedRadiographyImageStorage)
    association = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    if not association.is_established:
        raise RuntimeError("the receiver refused the benchmark's association")
    ok = 0
    try:
        for path in paths:
            status = association.send_c_store(pydicom.dcmread(path))
            ok += int(status is not None and status.get("Status") == 0)
    finally:
        association.release()
    return time.perf_counter() - started, ok


def run_benchmark(*, instances: int, sender: str | None = None) -> ReceiverBenchmark:
    """Run both passes against an in-process receiver on the configured (scratch) database."""
    from django.db import connection

    from studies.dicom_receiver import DicomReceiver
    from studies.models import Radiograph

    sender = sender or ("storescu" if shutil.which("storescu") else "pynetdicom")
    receiver = DicomReceiver(ae_title=AE_TITLE, port=_free_port(), allowed=[], bind_address="127.0.0.1")
    receiver.start()
    try:
        with tempfile.TemporaryDirectory(prefix="mskdetect-rx-bench-") as folder:
            paths, study_uid = write_instances(Path(folder), instances)
            size = paths[0].stat().st_size
            first_seconds, first_ok = send(paths, port=receiver.port, sender=sender)
            again_seconds, again_ok = send(paths, port=receiver.port, sender=sender)
    finally:
        receiver.stop()
    images = Radiograph.objects.filter(study__study_instance_uid=study_uid)
    figures = receiver.counters.figures()
    return ReceiverBenchmark(
        sender=sender,
        database=connection.vendor,
        bytes_per_instance=size,
        first=_figures(instances, first_seconds, first_ok),
        again=_figures(instances, again_seconds, again_ok),
        stored=images.count(),
        distinct_sop_instance_uids=images.values("sop_instance_uid").distinct().count(),
        duplicates_counted=figures.instances_duplicate,
        refused_counted=figures.instances_refused,
    )


def _figures(instances: int, seconds: float, ok: int) -> PassFigures:
    return PassFigures(
        instances=instances,
        seconds=round(seconds, 3),
        instances_per_second=round(instances / seconds, 1) if seconds else 0.0,
        answered_success=ok,
    )
