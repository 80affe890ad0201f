"""The whole clinical flow in a browser, with the real worker: staff registers a study and uploads
radiographs, watches the result arrive without reloading, opens the heat map; a radiologist
overrides with a reason; the audit trail shows both; staff never sees the review controls.

Needs the end-to-end set-up of tests/e2e (PostgreSQL shared with a real Celery worker).
"""

import pytest

from studies.models import Study
from tests.browser.conftest import DESKTOP, TABLET
from tests.conftest import SHARED_DATA
from tests.e2e.conftest import PASSWORD

pytestmark = pytest.mark.integration

WRIST_PNG = sorted((SHARED_DATA / "png16").glob("*.png"))[:2]


def test_staff_uploads_radiologist_overrides_audit_shows_both(e2e, open_page, tmp_path):
    e2e.manage("adduser", "stella", "--role", "staff")
    e2e.manage("adduser", "rita", "--role", "radiologist")

    # The PDF is refused: one 400 answer to its upload, shown on its line.
    staff = open_page(DESKTOP, base_url=e2e.base_url, allow=[r"^HTTP 400 POST \S+/studies/\d+/images/ "])
    staff.login("stella", PASSWORD)
    page = staff.page
    page.get_by_role("link", name="New study").first.click()
    page.get_by_label("MRN (patient ID)").fill("E2E-MRN-1")
    page.get_by_label("Patient name").fill("Flow Patient")
    page.get_by_label("Accession number").fill("E2E-ACC-1")
    page.get_by_label("Body part").select_option("XR_WRIST")
    bad = tmp_path / "scan-report.pdf"
    bad.write_bytes(b"%PDF-1.4 not a radiograph")
    page.locator("#id_file").set_input_files([*(str(p) for p in WRIST_PNG), str(bad)])
    page.get_by_role("button", name="Create study and upload").click()
    page.locator('.upload-item[data-state="failed"]').wait_for()
    staff.wait_until("document.querySelectorAll('.upload-item[data-state=done]').length === 2")
    assert "scan-report.pdf" in page.locator('.upload-item[data-state="failed"]').inner_text()
    staff.shot("flow-1-upload")

    page.get_by_role("link", name="Open the study").click()
    study = Study.objects.get(accession_number="E2E-ACC-1")
    page.wait_for_url(f"**/studies/{study.pk}/")
    # Mark this document: if the page reloaded, the mark would be gone.
    page.evaluate("document.body.dataset.loadedOnce = 'yes'")
    staff.wait_until(
        "['predicted', 'failed', 'unsupported']"
        ".includes(document.getElementById('study-live').dataset.status)",
        timeout=180,
    )
    assert page.evaluate("document.body.dataset.loadedOnce") == "yes", "the page reloaded"
    assert page.locator("#study-live").get_attribute("data-status") == "predicted", e2e.worker.tail()
    assert page.get_by_test_id("demo-warning").is_visible()
    assert "%" in page.get_by_test_id("study-probability").inner_text()
    model_label = page.get_by_test_id("model-label").inner_text().strip().lower()

    # The heat map reached the viewer without a reload (it was not there when the page opened).
    staff.wait_until("document.querySelector('[data-viewer]').dataset.heatmap === 'off'")
    page.get_by_label("Heat map").first.check()
    staff.wait_until("document.querySelector('[data-viewer]').dataset.heatmap === 'on'")
    assert page.locator("#review-form").count() == 0
    staff.shot("flow-2-result-heatmap")

    radiologist = open_page(TABLET, base_url=e2e.base_url)
    radiologist.login("rita", PASSWORD)
    rpage = radiologist.page
    radiologist.goto(f"/studies/{study.pk}/")
    rpage.get_by_label("Override the model").check()
    other = "Normal" if model_label == "abnormal" else "Abnormal"
    rpage.get_by_label(other, exact=True).check()
    rpage.get_by_label("Reason").fill("Physeal line mistaken for a fracture")
    rpage.get_by_role("button", name="Record review").click()
    rpage.wait_for_url(f"**/studies/{study.pk}/#review")
    assert rpage.get_by_test_id("final-label").inner_text() == other
    radiologist.shot("flow-3-override-tablet")

    staff.goto(f"/studies/{study.pk}/")
    trail = page.get_by_test_id("audit-trail").inner_text()
    assert "stella registered study E2E-ACC-1 (Wrist, 3 images expected)" in trail
    assert f"stella uploaded image 1 ({WRIST_PNG[0].name}): PNG" in trail
    assert f"rita overrode the model's result {model_label.capitalize()}: final label {other}" in trail
    assert "The worker predicted image " in trail and "study result " in trail
    assert "Physeal line mistaken for a fracture" in page.get_by_test_id("review-history").inner_text()
    assert page.locator("#review-form").count() == 0
    staff.shot("flow-4-audit-trail")

    staff.goto("/")
    row = page.locator(f'tr[data-study-id="{study.pk}"]')
    assert f"Reviewed: {other}" in row.inner_text()
    staff.shot("flow-5-worklist", full_page=False)
    assert staff.problems == [] and radiologist.problems == []
