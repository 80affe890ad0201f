"""Fixtures for the receiving tests: a real `manage.py dicom_receiver` process, a real worker and web
server (tests/e2e/conftest.py) on the test database, DCMTK's storescu, and hand radiographs copied
with new identities.

Import the fixtures into a test module with `from tests.pacs.fixtures_receiver import *`.
"""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import generate_uid

from tests.conftest import REPO_ROOT, SHARED_DATA
from tests.e2e.conftest import (  # noqa: F401 (fixtures used by name)
    WebServer,
    Worker,
    _die_with_parent,
    e2e_dir,
    e2e_env,
)
from tests.pacs.orthanc import free_port

DICOM = SHARED_DATA / "dicom"
HAND_CR = DICOM / "NM_Kakadu44_SOTmarkerincons.dcm"  # CR hand, JPEG 2000 lossless
TIBIA_CR = DICOM / "RG3_J2KR.dcm"  # CR distal tibia (not a MURA type), JPEG 2000 lossless
HIP_CR = DICOM / "RG2_JPLL.dcm"  # CR hip (not a MURA type), JPEG lossless
CSPINE_CR = DICOM / "CR1_6154_noext"  # CR cervical spine (not a MURA type), 16 x 16, uncompressed
# The calling AE titles the receiver under test allows (MSKDETECT_DICOM_ALLOWED); others are refused.
ALLOWED_CALLERS = ("STORESCU", "ORTHANC", "STOWSCU")
RECEIVER_AE = "MSKDETECT"
WAIT_SECONDS = 90


class Receiver:
    """`manage.py dicom_receiver` on a free local port, in its own process; its log is kept."""

    def __init__(self, *, env: dict[str, str], log_path: Path, ae_title: str = RECEIVER_AE) -> None:
        self.port = free_port()
        self.ae_title = ae_title
        self.log_path = log_path
        self.log = log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable, "manage.py", "dicom_receiver", "--bind", "127.0.0.1",
                "--port", str(self.port), "--grace-seconds", "5",
            ],
            env={**env, "MSKDETECT_DICOM_AE_TITLE": ae_title}, cwd=REPO_ROOT, stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while b"listening on" not in log_path.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the DICOM receiver did not start:\n{self.tail()}")
            time.sleep(0.2)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as docker and Ctrl-C do; returns the exit status."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.log.close()
        return self.process.returncode

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def storescu(receiver: Receiver, *files: Path, aet: str = "STORESCU", options: tuple[str, ...] = ()) -> str:
    """Send files with DCMTK's storescu (verbose); returns its output. storescu exits 0 even when
    the receiver refuses a file: the tests read the responses in the output."""
    done = subprocess.run(
        ["storescu", "-v", "-nh", *options, "-aet", aet, "-aec", receiver.ae_title, "127.0.0.1",
         str(receiver.port), *map(str, files)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return done.stdout + done.stderr


def wait_for(check: Callable[[], object], what: str, *logs, timeout: float = WAIT_SECONDS):
    """Poll `check` until it returns something true; fail with the processes' logs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"{what}: not within {timeout} s\n" + "\n\n".join(log.tail() for log in logs))


def hand_copy(folder: Path, **tags) -> Path:
    """The shared hand CR as a new instance (new SOPInstanceUID; `tags` override others), written by
    pydicom. Its JPEG 2000 frame is encapsulated again: the original's fragment has an odd length,
    which pydicom would write as a broken item that DCMTK and Orthanc refuse."""
    dataset = pydicom.dcmread(HAND_CR)
    frames = list(generate_frames(dataset.PixelData, number_of_frames=1))
    dataset.PixelData = encapsulate(frames)
    dataset["PixelData"].is_undefined_length = True
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword, value in tags.items():
        setattr(dataset, keyword, value)
    path = folder / f"{dataset.SOPInstanceUID}.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return path


def new_hand_study(folder: Path, *, patient_id: str, instances: int = 1) -> list[Path]:
    """`instances` copies of the hand CR in a study of their own."""
    study, series = generate_uid(), generate_uid()
    return [
        hand_copy(folder, StudyInstanceUID=study, SeriesInstanceUID=series, PatientID=patient_id)
        for _ in range(instances)
    ]


@pytest.fixture(scope="module")
def receive_env(e2e_env, hand_model_dir) -> dict[str, str]:  # noqa: F811
    return {
        **e2e_env,
        "MSKDETECT_MODEL_DIR": str(hand_model_dir),
        "MSKDETECT_DICOM_ALLOWED": ",".join(ALLOWED_CALLERS),
        "MSKDETECT_DICOM_HEARTBEAT_SECONDS": "1",
    }


@pytest.fixture(scope="module")
def receive_worker(receive_env, e2e_dir) -> Iterator[Worker]:  # noqa: F811
    worker = Worker(env=receive_env, log_path=e2e_dir / "receive-worker.log")
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def dicom_receiver(receive_env, e2e_dir) -> Iterator[Receiver]:  # noqa: F811
    receiver = Receiver(env=receive_env, log_path=e2e_dir / "receiver.log")
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def receive_web(receive_env, e2e_dir) -> Iterator[WebServer]:  # noqa: F811
    server = WebServer(env=receive_env, log_path=e2e_dir / "receive-web.log")
    yield server
    server.stop()


@pytest.fixture
def receiving(transactional_db, settings, receive_env, receive_worker, dicom_receiver):
    """The receiver and the worker running on an empty test database; this process reads the same media."""
    settings.MEDIA_ROOT = receive_env["MEDIA_ROOT"]
    return dicom_receiver, receive_worker
