"""Intake checks in a real browser (no worker needed): a DICOM of another patient and body part is
refused on the new-study page with both values named, confirmed there with a reason, and shown as a
warning on the study page; the study page says "1 of 2 files received" while a file is missing, and
its plain upload form refuses a mismatch too. Fails on any console error, CSP violation or failed
request (the refusals' own 400 answers aside: tests/browser/conftest.py)."""

import datetime

import pytest

from studies.models import Radiograph, Study
from tests.browser.conftest import DESKTOP
from tests.conftest import SHARED_DATA
from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.usefixtures("transactional_db")

HIP_DICOM = SHARED_DATA / "dicom" / "RG2_JPLL.dcm"  # PatientID 10RG2, BodyPartExamined HIP
TIBIA_DICOM = SHARED_DATA / "dicom" / "RG3_J2KR.dcm"  # PatientID 11RG3, "... distal tibia"
WRIST_PNG = sorted((SHARED_DATA / "png16").glob("*.png"))[0]


# The upload refusals (400 on .../images/) are what this test is about; anything else fails it.
REFUSAL = r"^HTTP 400 POST \S+/studies/\d+/images/ "


def test_mismatched_dicom_refused_then_confirmed_and_shown_on_the_study_page(open_page):
    UserFactory(username="stella", role="staff")
    browser = open_page(DESKTOP, allow=[REFUSAL])
    browser.login("stella", PASSWORD)
    page = browser.page
    browser.goto("/studies/new/")
    page.get_by_label("MRN (patient ID)").fill("MRN-0042")
    page.get_by_label("Patient name").fill("Jane Doe")
    page.get_by_label("Accession number").fill("ACC-INTAKE-1")
    page.get_by_label("Body part").select_option("XR_WRIST")
    page.get_by_label("Study date").fill("2024-01-31")
    page.locator("#id_file").set_input_files([str(WRIST_PNG), str(HIP_DICOM)])
    browser.wait_until("document.querySelectorAll('.upload-note')[1].textContent.includes('10RG2')")
    # The foreign file filled in nothing: every field already had the user's value.
    assert page.get_by_label("Study date").input_value() == "2024-01-31"
    page.get_by_role("button", name="Create study and upload").click()

    refused = page.locator('.upload-item[data-state="failed"]')
    refused.wait_for()
    page.wait_for_selector(".upload-item[data-state=done]")
    text = refused.inner_text()
    assert "RG2_JPLL.dcm" in refused.inner_text()
    for words in ['PatientID "10RG2"', 'MRN "MRN-0042"', "CompressedSamples^RG2", "Jane Doe", "HIP"]:
        assert words in text, words
    assert refused.get_by_role("button", name="Upload with the mismatch confirmed").is_visible()
    assert "1 of 2 file(s) uploaded" in page.locator("#upload-summary").inner_text()
    browser.shot("intake-1-refused-on-new-study")

    study = Study.objects.get(accession_number="ACC-INTAKE-1")
    assert study.images.count() == 1 and study.expected_images == 2
    # Meanwhile the study page says a file is missing.
    second = open_page(DESKTOP, allow=[REFUSAL])
    second.page.context.add_cookies(page.context.cookies())
    second.goto(f"/studies/{study.pk}/")
    missing = second.page.get_by_test_id("files-missing")
    assert missing.is_visible() and "1 of 2 files received" in missing.inner_text()
    second.shot("intake-2-study-missing-a-file")

    # Confirm the mismatch with a reason, on the file that was refused.
    refused.get_by_role("button", name="Upload with the mismatch confirmed").click()
    assert refused.get_by_label("Reason (required)").get_attribute("aria-invalid") == "true"
    refused.get_by_label("This file is right despite the mismatch: upload it anyway").check()
    refused.get_by_label("Reason (required)").fill("Outside film for comparison, patient agreed")
    refused.get_by_role("button", name="Upload with the mismatch confirmed").click()
    browser.wait_until("document.querySelectorAll('.upload-item[data-state=done]').length === 2")
    assert "2 of 2 file(s) uploaded" in page.locator("#upload-summary").inner_text()
    image = Radiograph.objects.get(study=study, format="dcm")
    assert image.mismatch_reason == "Outside film for comparison, patient agreed"

    page.get_by_role("link", name="Open the study").click()
    page.wait_for_url(f"**/studies/{study.pk}/")
    warning = page.get_by_test_id("mismatch-warning")
    assert warning.is_visible()
    for words in ["PatientID", "10RG2", "MRN-0042", "Outside film for comparison", "stella"]:
        assert words in warning.inner_text(), words
    assert page.get_by_test_id("files-missing").count() == 0
    assert "Header mismatch confirmed" in page.get_by_test_id("image-mismatch").inner_text()
    browser.shot("intake-3-study-with-confirmed-mismatch")

    # The study page's own form refuses another patient's file, naming both values.
    page.locator("summary", has_text="Add images to this study").click()
    page.get_by_label("Radiographs (PNG, JPEG or DICOM)").set_input_files(str(TIBIA_DICOM))
    page.get_by_role("button", name="Upload").click()
    page.wait_for_url(f"**/studies/{study.pk}/")
    alert = page.locator(".alert", has_text="RG3_J2KR.dcm")
    assert (
        "11RG3" in alert.inner_text() and "MRN-0042" in alert.inner_text() and "TIBIA" in alert.inner_text()
    )
    browser.shot("intake-4-study-form-refusal")
    assert study.images.count() == 2
    assert Study.objects.get(pk=study.pk).study_date == datetime.date(2024, 1, 31)

    # The new-study page's refusal was a 400; the study page's form answers its refusal with a redirect.
    assert len(browser.allowed) == 1, browser.allowed
    assert browser.problems == [] and second.problems == [], (browser.problems, second.problems)
