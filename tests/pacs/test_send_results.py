"""Results go back to a real Orthanc: by C-STORE to one, by STOW-RS to another, into the source study.

A study is made from the shared hand CR (and a copy of it with its own SOPInstanceUID), uploaded as
staff do; a real Celery worker process predicts it (a tiny demo model, with demo results sent on),
builds the SR and the heat-map secondary captures and sends them. The files Orthanc stores are
checked with DCMTK's `dsrdump` and, where installed, dicom3tools' `dciodvfy`. A radiologist's review
sends a second SR that names the first as its predecessor; an Orthanc stopped when the result is
sent gets it once it is back.
"""

import io
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage

from studies import services
from studies.models import BodyPart, DicomExport, DicomSend
from tests.conftest import SHARED_DATA
from tests.e2e.conftest import Worker, e2e_dir, e2e_env  # noqa: F401 (fixtures)
from tests.factories import PatientFactory, StudyFactory, UserFactory
from tests.pacs.orthanc import Orthanc

pytestmark = pytest.mark.integration

HAND_CR = SHARED_DATA / "dicom" / "NM_Kakadu44_SOTmarkerincons.dcm"
WAIT_SECONDS = 90


@pytest.fixture(scope="module")
def stow_orthanc(tmp_path_factory, orthanc_server) -> Iterator[Orthanc]:
    """A second Orthanc, the STOW-RS destination (the session's own is the C-STORE one)."""
    server = Orthanc(tmp_path_factory.mktemp("orthanc-stow"), aet="STOWPACS").start()
    yield server
    server.destroy()


@pytest.fixture(scope="module")
def pacs_worker(e2e_env, e2e_dir, hand_model_dir, orthanc_server, stow_orthanc) -> Iterator[Worker]:  # noqa: F811
    """A real `celery worker -B` sending to both Orthancs, retrying a down one every second or two."""
    env = {
        **e2e_env,
        **destination_env(orthanc_server, stow_orthanc),
        "MSKDETECT_MODEL_DIR": str(hand_model_dir),
        "MSKDETECT_PACS_RETRY_SECONDS": "1",
        "MSKDETECT_PACS_RETRY_MAX_SECONDS": "2",
        "MSKDETECT_PACS_TIMEOUT_SECONDS": "10",
    }
    worker = Worker(env=env, log_path=e2e_dir / "pacs-worker.log")
    worker.start()
    yield worker
    worker.stop()


def destination_env(cstore: Orthanc, stow: Orthanc) -> dict[str, str]:
    return {
        "MSKDETECT_DICOM_DESTINATIONS": f"{cstore.aet}@127.0.0.1:{cstore.dicom_port}",
        "MSKDETECT_STOWRS_DESTINATION": stow.dicomweb_url,
        "MSKDETECT_SEND_DEMO_RESULTS": "1",
    }


@pytest.fixture
def pacs(transactional_db, settings, e2e_env, pacs_worker, orthanc, stow_orthanc):  # noqa: F811
    """Both Orthancs empty and running; this process stores uploads where the worker reads them and
    plans sends (reviews) to the same places."""
    for patient in stow_orthanc.get("/patients"):
        stow_orthanc._request("DELETE", f"/patients/{patient}")
    settings.MEDIA_ROOT = e2e_env["MEDIA_ROOT"]
    env = destination_env(orthanc, stow_orthanc)
    settings.MSKDETECT_DICOM_DESTINATIONS = [env["MSKDETECT_DICOM_DESTINATIONS"]]
    settings.MSKDETECT_STOWRS_DESTINATION = env["MSKDETECT_STOWRS_DESTINATION"]
    settings.MSKDETECT_SEND_DEMO_RESULTS = True
    return orthanc, stow_orthanc, pacs_worker


def copy_of_hand_cr(folder: Path, *, new_study: bool = False) -> Path:
    """The shared CR with its own SOPInstanceUID (and, if asked, its own study and series).

    The UIDs are changed in place in the file's bytes, each for one of the same length: pydicom
    reads this file well, but writing it back makes its odd-length JPEG 2000 fragment an item that
    DCMTK (and so Orthanc) refuses.
    """
    header = pydicom.dcmread(HAND_CR, stop_before_pixels=True)
    data = HAND_CR.read_bytes()
    changed = ["SOPInstanceUID"] + (["StudyInstanceUID", "SeriesInstanceUID"] if new_study else [])
    for keyword in changed:
        old = str(header[keyword].value)
        new = same_length_uid(old)
        assert data.count(old.encode()) == (2 if keyword == "SOPInstanceUID" else 1)  # meta + data set
        data = data.replace(old.encode(), new.encode())
    path = folder / f"copy-{len(list(folder.glob('copy-*')))}.dcm"
    path.write_bytes(data)
    copied = pydicom.dcmread(path, stop_before_pixels=True)
    assert copied.SOPInstanceUID != header.SOPInstanceUID
    return path


def same_length_uid(uid: str) -> str:
    """Another valid UID as long as `uid`: its last component's last digits replaced."""
    head, _, last = uid.rpartition(".")
    tail = str(secrets.randbelow(9 * 10 ** (min(len(last), 6) - 1)) + 10 ** (min(len(last), 6) - 1))
    new = f"{head}.{last[: len(last) - len(tail)]}{tail}"
    return new if new != uid else same_length_uid(uid)


def upload_study(paths: list[Path]):
    """Staff register a hand study and upload the files: the worker gets them after the commit."""
    staff = UserFactory(role="staff")
    study = StudyFactory(patient=PatientFactory(mrn="XXXXXXXX"), body_part=BodyPart.HAND)
    files = [SimpleUploadedFile(path.name, path.read_bytes()) for path in paths]
    services.radiographs_add(study=study, files=files, actor=staff)
    return study


def wait_for(check: Callable[[], object], what: str, worker: Worker, timeout: float = WAIT_SECONDS):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout} s\nworker log:\n{worker.tail()}")


def sends_done(export: DicomExport | None) -> list[DicomSend] | None:
    if export is None:
        return None
    sends = list(DicomSend.objects.filter(export=export))
    return sends if sends and all(send.status != "pending" for send in sends) else None


def stored(server: Orthanc, study_uid: str) -> dict[str, dict]:
    """The main tags (and Orthanc's ID) of every instance of the study in that Orthanc, by SOPInstanceUID."""
    return {
        tags["SOPInstanceUID"]: tags
        for tags in server.instances()
        if tags.get("StudyInstanceUID") == study_uid
    }


def stored_file(server: Orthanc, tags: dict) -> pydicom.Dataset:
    """The file that Orthanc stored, as pydicom reads it."""
    return pydicom.dcmread(io.BytesIO(server.file(tags["ID"])))


def check_with_dcmtk_and_dicom3tools(datasets: list[pydicom.Dataset], folder: Path) -> None:
    """dsrdump reads every SR; dciodvfy (when installed) finds no error in any file: warnings are fine."""
    paths = []
    for dataset in datasets:
        path = folder / f"{dataset.SOPInstanceUID}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append((dataset, path))
        if dataset.SOPClassUID == ComprehensiveSRStorage:
            dump = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True, timeout=60)
            assert dump.returncode == 0, dump.stderr
            assert "Comprehensive SR Document" in dump.stdout
            assert "Probability of abnormality" in dump.stdout and "Demonstration model" in dump.stdout
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed: the IOD check is skipped")
    for dataset, path in paths:
        verify = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        errors = [line for line in (verify.stdout + verify.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], f"dciodvfy: errors in the {dataset.SOPClassUID.name}:\n" + "\n".join(errors)


def test_results_reach_both_pacs_in_the_source_study_and_a_review_sends_a_second_report(pacs, tmp_path):
    cstore_pacs, stow_pacs, worker = pacs
    second = copy_of_hand_cr(tmp_path)
    for server in (cstore_pacs, stow_pacs):  # the PACS holds the study the results belong to
        server.upload(HAND_CR)
        server.upload(second)
    study_uid = str(pydicom.dcmread(HAND_CR, stop_before_pixels=True).StudyInstanceUID)
    sources = {
        str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in (HAND_CR, second)
    }

    started = time.monotonic()
    study = upload_study([HAND_CR, second])
    result = wait_for(
        lambda: sends_done(DicomExport.objects.filter(study=study, trigger="result").first()),
        "the result sent to both destinations",
        worker,
    )
    result_seconds = time.monotonic() - started
    assert {send.status for send in result} == {"sent"}, [(s.destination, s.last_error) for s in result]
    assert {send.protocol for send in result} == {"cstore", "stowrs"}
    export = DicomExport.objects.get(study=study, trigger="result")
    sent_uids = {item["sop_instance_uid"] for item in export.instances}
    assert len(sent_uids) == 3  # the SR and one heat-map image per source image

    for server in (cstore_pacs, stow_pacs):
        in_study = stored(server, study_uid)
        assert set(in_study) == sources | sent_uids, f"{server.aet}: not the source study plus the results"
        assert sorted(in_study[uid]["SOPClassUID"] for uid in sent_uids) == sorted(
            [ComprehensiveSRStorage, SecondaryCaptureImageStorage, SecondaryCaptureImageStorage]
        )
        assert len({tags["SeriesInstanceUID"] for tags in in_study.values()}) == 3  # source, SR, heat maps
    in_study = stored(cstore_pacs, study_uid)
    results = [stored_file(cstore_pacs, in_study[uid]) for uid in sent_uids]
    report = next(ds for ds in results if ds.SOPClassUID == ComprehensiveSRStorage)
    evidence = {
        item.ReferencedSOPInstanceUID
        for series in report.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert evidence == sources

    started = time.monotonic()
    services.review_create(
        study=study, radiologist=UserFactory(role="radiologist"), decision="confirm", final_label=None
    )
    reviewed = wait_for(
        lambda: sends_done(DicomExport.objects.filter(study=study, trigger="review").first()),
        "the review sent to both destinations",
        worker,
    )
    review_seconds = time.monotonic() - started
    assert {send.status for send in reviewed} == {"sent"}
    (review_uid,) = [
        item["sop_instance_uid"] for item in DicomExport.objects.get(study=study, trigger="review").instances
    ]
    assert review_uid in stored(stow_pacs, study_uid)
    second_report = stored_file(cstore_pacs, stored(cstore_pacs, study_uid)[review_uid])
    predecessor = second_report.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == report.SOPInstanceUID
    assert second_report.SeriesInstanceUID == report.SeriesInstanceUID and second_report.InstanceNumber == 2
    megabytes = sum(default_storage.size(item["file"]) for item in export.instances) / 1e6
    print(
        f"\nPACS send: 2 CRs uploaded -> result (SR + 2 heat maps, {megabytes:.1f} MB) in both PACS "
        f"in {result_seconds:.1f} s; review -> second SR in both PACS in {review_seconds:.1f} s"
    )
    check_with_dcmtk_and_dicom3tools([*results, second_report], tmp_path)


def test_a_pacs_that_is_down_when_the_result_is_sent_gets_it_once_it_is_back(pacs, tmp_path):
    cstore_pacs, stow_pacs, worker = pacs
    source = copy_of_hand_cr(tmp_path, new_study=True)
    study_uid = str(pydicom.dcmread(source, stop_before_pixels=True).StudyInstanceUID)
    cstore_pacs.stop()
    try:
        study = upload_study([source])
        failing = wait_for(
            lambda: DicomSend.objects.filter(study=study, protocol="cstore", attempts__gte=2).first(),
            "two failed attempts while the PACS is down",
            worker,
        )
        assert failing.status == "pending" and "did not answer" in failing.last_error
    finally:
        cstore_pacs.start()
    back = time.monotonic()
    sends = wait_for(
        lambda: sends_done(DicomExport.objects.filter(study=study, trigger="result").first()),
        "the result sent once the PACS is back",
        worker,
    )
    assert {send.status for send in sends} == {"sent"}
    cstore_send = next(send for send in sends if send.protocol == "cstore")
    assert cstore_send.attempts >= 3
    export = DicomExport.objects.get(study=study, trigger="result")
    results = {item["sop_instance_uid"] for item in export.instances}
    assert results <= set(stored(cstore_pacs, study_uid))
    assert results <= set(stored(stow_pacs, study_uid))  # the other destination never waited
    # sent_at is wall-clock time: bring it onto the monotonic clock of `back`.
    after_restart = cstore_send.sent_at.timestamp() - time.time() + time.monotonic() - back
    print(
        f"\nPACS down: {cstore_send.attempts - 1} failed attempts; the result was stored "
        f"{after_restart:.1f} s after Orthanc was back"
    )
