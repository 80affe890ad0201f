"""Each page in a real browser (no worker needed): layout at 1366x768 and 768x1024, the CSP holding
with the vendored Bootstrap, htmx and Chart.js, the viewer controls, the review form, uploads."""

import datetime

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.utils import timezone

from inference.decoding import decode_image
from inference.gradcam import heatmap_overlay_png
from studies.models import ImageStatus, Review, Study
from tests.browser.conftest import DESKTOP, TABLET
from tests.conftest import SHARED_DATA
from tests.factories import (
    PASSWORD,
    PredictionFactory,
    RadiographFactory,
    ReviewFactory,
    StudyFactory,
    StudyResultFactory,
    UserFactory,
)

pytestmark = pytest.mark.usefixtures("transactional_db")

WRIST_PNG = sorted((SHARED_DATA / "png16").glob("*.png"))
WRIST_JPEG = sorted((SHARED_DATA / "jpeg").glob("*.jpg"))


def _predicted_study(*, accession: str, probability: float, image: bytes, demo: bool = True) -> Study:
    """A study whose one real radiograph has a prediction and a Grad-CAM overlay."""
    study = StudyFactory(accession_number=accession, status=Study.Status.PREDICTED)
    radiograph = RadiographFactory(study=study, content=image, status=ImageStatus.DONE)
    prediction = PredictionFactory(radiograph=radiograph, abnormal_probability=probability, demo=demo)
    heat = np.zeros((7, 7), dtype=np.float32)
    heat[2:5, 3:6] = [[0.4, 0.7, 0.4], [0.7, 1.0, 0.7], [0.4, 0.7, 0.4]]
    overlay = heatmap_overlay_png(decode_image(image), heat, preprocessing="seed")
    prediction.heatmap.save("gradcam.png", ContentFile(overlay))
    StudyResultFactory(study=study, abnormal_probability=probability, demo=demo)
    return study


@pytest.fixture
def ward():
    """A small worklist: flagged, reviewed, processing, failed and new studies."""
    flagged = _predicted_study(accession="ACC-FLAG", probability=0.91, image=WRIST_PNG[0].read_bytes())
    reviewed = _predicted_study(accession="ACC-REV", probability=0.77, image=WRIST_JPEG[0].read_bytes())
    ReviewFactory(study=reviewed, final_label="abnormal", model_label="abnormal")
    Study.objects.filter(pk=reviewed.pk).update(status=Study.Status.REVIEWED)
    _predicted_study(accession="ACC-NORM", probability=0.12, image=WRIST_JPEG[1].read_bytes())
    busy = StudyFactory(accession_number="ACC-BUSY", status=Study.Status.PROCESSING, body_part="XR_HAND")
    RadiographFactory(study=busy, content=WRIST_JPEG[2].read_bytes(), status=ImageStatus.PROCESSING)
    failed = StudyFactory(
        accession_number="ACC-FAIL", status=Study.Status.FAILED, error="The model file is corrupt."
    )
    RadiographFactory(study=failed, status=ImageStatus.FAILED, error="model load failed")
    StudyFactory(accession_number="ACC-NEW")
    Study.objects.filter(accession_number="ACC-NEW").update(
        created_at=timezone.now() - datetime.timedelta(days=3)
    )
    return {"flagged": flagged, "reviewed": reviewed, "failed": failed}


def _no_horizontal_scroll(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


@pytest.mark.parametrize(("viewport", "label"), [(DESKTOP, "desktop"), (TABLET, "tablet")])
def test_login_and_worklist_layout(open_page, ward, viewport, label):
    UserFactory(username="stella", first_name="Stella", last_name="Staff", role="staff")
    browser = open_page(viewport)
    browser.goto("/")
    assert "/login/" in browser.page.url
    browser.shot(f"login-{label}")
    browser.login("stella", PASSWORD)
    page = browser.page
    assert page.get_by_test_id("current-user").inner_text().startswith("Stella Staff")
    assert page.get_by_test_id("current-role").inner_text() == "Staff"
    rows = page.locator("#worklist-table tbody tr")
    assert rows.first.get_attribute("data-status") == "predicted"
    assert "ACC-FLAG" in rows.first.inner_text() and "Flagged" in rows.first.inner_text()
    # A processing study keeps the table polling; thumbnails come through the authenticated preview.
    assert page.locator("#worklist-table").get_attribute("hx-trigger") == "every 3s"
    if label == "desktop":
        # Thumbnails load through the authenticated preview (hidden below 992 px to fit a tablet).
        browser.wait_until(
            "[...document.querySelectorAll('img.worklist-thumb')].every(i => i.naturalWidth > 0)"
        )
    assert _no_horizontal_scroll(page)
    browser.shot(f"worklist-{label}", full_page=False)
    assert browser.problems == []


def test_worklist_filters_in_the_browser(open_page, ward):
    UserFactory(username="stella", role="staff")
    browser = open_page()
    browser.login("stella", PASSWORD)
    page = browser.page
    page.get_by_label("Body part").select_option("XR_HAND")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url("**body_part=XR_HAND**")
    assert page.locator("#worklist-table tbody tr").count() == 1
    page.get_by_label("Search").fill("ACC-FAIL")
    page.get_by_label("Body part").select_option("")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url("**q=ACC-FAIL**")
    assert page.locator("#worklist-table tbody tr").count() == 1
    assert browser.problems == []


def test_study_page_viewer_controls_and_no_review_for_staff(open_page, ward):
    UserFactory(username="stella", role="staff")
    browser = open_page()
    browser.login("stella", PASSWORD)
    page = browser.page
    browser.goto(f"/studies/{ward['flagged'].pk}/")
    image_id = ward["flagged"].images.get().pk
    # The viewer (tests/browser/test_viewer.py covers it in depth) loads the heat map; the switch shows it.
    viewer = f"document.getElementById('viewer-{image_id}').dataset"
    browser.wait_until(f"{viewer}.heatmap === 'off'", timeout=30)
    page.get_by_label("Heat map").check()
    browser.wait_until(f"{viewer}.heatmap === 'on'")
    page.get_by_label("Heat-map opacity").fill("40")
    assert page.locator(f"#viewer-{image_id} [data-viewer-opacity-value]").inner_text() == "40 %"
    zoom = page.locator(f"#viewer-{image_id} [data-viewer-zoom-readout]")
    assert zoom.inner_text().endswith("(fit)")
    page.get_by_role("button", name="Zoom in").click()
    readout = f"document.querySelector('#viewer-{image_id} [data-viewer-zoom-readout]').textContent"
    browser.wait_until(f"!{readout}.endsWith('(fit)')")
    assert page.get_by_test_id("demo-warning").is_visible()
    assert page.locator("#review-form").count() == 0
    assert page.get_by_test_id("review-readonly").is_visible()
    browser.shot("study-heatmap-desktop")
    assert browser.problems == []


def test_failed_study_shows_error_and_run_again(open_page, ward):
    UserFactory(username="stella", role="staff")
    browser = open_page(TABLET)
    browser.login("stella", PASSWORD)
    page = browser.page
    browser.goto(f"/studies/{ward['failed'].pk}/")
    assert page.get_by_role("alert").filter(has_text="The model file is corrupt.").is_visible()
    browser.shot("study-failed-tablet")
    page.get_by_role("button", name="Run again").click()
    assert page.get_by_text("1 image(s) sent for analysis again.").is_visible()
    # Queued again (or already picked up, when a session-wide worker runs beside these tests).
    assert page.locator("#study-live").get_attribute("data-status") in {"queued", "processing"}
    assert browser.problems == []


def test_radiologist_override_needs_a_reason(open_page, ward):
    UserFactory(username="rita", role="radiologist")
    # The override without a reason comes back as the form with its error, status 400.
    browser = open_page(allow=[r"^HTTP 400 POST \S+/studies/\d+/review/ "])
    browser.login("rita", PASSWORD)
    page = browser.page
    study = ward["flagged"]
    browser.goto(f"/studies/{study.pk}/")
    assert page.locator("#override-fields").is_hidden()
    page.get_by_label("Override the model").check()
    assert page.locator("#override-fields").is_visible()
    page.get_by_label("Normal", exact=True).check()
    page.get_by_role("button", name="Record review").click()
    assert page.get_by_text("An override needs a reason.").first.is_visible()
    page.wait_for_load_state("networkidle")
    assert not Review.objects.filter(study=study).exists()
    page.get_by_label("Override the model").check()
    page.get_by_label("Normal", exact=True).check()
    page.get_by_label("Reason").fill("Growth plate, not a fracture")
    page.get_by_role("button", name="Record review").click()
    page.wait_for_url(f"**/studies/{study.pk}/#review")
    assert "Growth plate, not a fracture" in page.get_by_test_id("review-history").inner_text()
    assert page.get_by_test_id("final-label").inner_text() == "Normal"
    assert page.locator('[data-action="study.reviewed"]').count() == 1
    browser.shot("study-reviewed-desktop")
    assert browser.problems == []


def test_dashboard_draws_charts(open_page, ward):
    UserFactory(username="stella", role="staff")
    browser = open_page()
    browser.login("stella", PASSWORD)
    browser.goto("/dashboard/")
    page = browser.page
    browser.wait_until("window.Chart && Chart.getChart('chart-flagged') && Chart.getChart('chart-agreement')")
    assert page.get_by_test_id("dashboard-table").is_visible()
    browser.shot("dashboard-desktop")
    assert browser.problems == []


def test_new_study_dicom_prefill_and_per_file_errors(open_page, tmp_path):
    UserFactory(username="stella", role="staff")
    # notes.txt is refused: one 400 answer to the upload, shown on its line.
    browser = open_page(allow=[r"^HTTP 400 POST \S+/studies/\d+/images/ "])
    browser.login("stella", PASSWORD)
    page = browser.page
    browser.goto("/studies/new/")
    page.locator("#id_file").set_input_files(str(SHARED_DATA / "dicom" / "NM_Kakadu44_SOTmarkerincons.dcm"))
    # The DICOM tags fill the form: PatientID, BodyPartExamined HAND, StudyDate.
    browser.wait_until("document.getElementById('id_mrn').value === 'XXXXXXXX'")
    assert page.get_by_label("Body part").input_value() == "XR_HAND"
    assert page.get_by_label("Study date").input_value() == "2011-02-18"
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    page.locator("#id_file").set_input_files([str(WRIST_JPEG[0]), str(notes)])
    page.get_by_label("Patient name").fill("Hand Patient")
    page.get_by_label("Accession number").fill("ACC-DICOM-1")
    page.get_by_role("button", name="Create study and upload").click()
    failed = page.locator('.upload-item[data-state="failed"]')
    failed.wait_for()
    page.wait_for_selector(".upload-item[data-state=done] >> nth=1")
    assert "notes.txt" in failed.inner_text() and "Refused" in failed.inner_text()
    assert page.locator(".upload-item[data-state=done]").count() == 2
    assert page.locator(".upload-item[data-state=done] progress").first.evaluate("p => p.value") == 100
    browser.shot("study-new-desktop")
    page.wait_for_load_state("networkidle")
    study = Study.objects.get(accession_number="ACC-DICOM-1")
    assert study.patient.mrn == "XXXXXXXX" and study.body_part == "XR_HAND" and study.images.count() == 2
    page.get_by_role("link", name="Open the study").click()
    page.wait_for_url(f"**/studies/{study.pk}/")
    assert browser.problems == []
