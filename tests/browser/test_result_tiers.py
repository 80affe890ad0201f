"""An indeterminate study in a real browser: visibly different in the worklist, never styled as a call,
and ruled on (not confirmed) from its page. Fails on any console error, CSP violation or failed request.
"""

import numpy as np
import pytest
from django.core.files.base import ContentFile

from inference.decoding import decode_image
from inference.gradcam import heatmap_overlay_png
from studies.models import ImageStatus, Study
from tests.browser.conftest import DESKTOP, TABLET
from tests.conftest import SHARED_DATA
from tests.factories import (
    PASSWORD,
    PredictionFactory,
    RadiographFactory,
    StudyFactory,
    StudyResultFactory,
    UserFactory,
)

pytestmark = pytest.mark.usefixtures("transactional_db")

BAND = (0.35, 0.65)
WRIST_JPEG = sorted((SHARED_DATA / "jpeg").glob("*.jpg"))


def _study(*, accession: str, probability: float, image: bytes, band=BAND) -> Study:
    study = StudyFactory(accession_number=accession, status=Study.Status.PREDICTED)
    radiograph = RadiographFactory(study=study, content=image, status=ImageStatus.DONE)
    prediction = PredictionFactory(
        radiograph=radiograph, abnormal_probability=probability, indeterminate=band, demo=True
    )
    heat = np.zeros((7, 7), dtype=np.float32)
    heat[2:5, 3:6] = 1.0
    prediction.heatmap.save("gradcam.png", ContentFile(heatmap_overlay_png(decode_image(image), heat)))
    StudyResultFactory(study=study, abnormal_probability=probability, indeterminate=band, demo=True)
    return study


@pytest.mark.parametrize(("viewport", "label"), [(DESKTOP, "desktop"), (TABLET, "tablet")])
def test_an_indeterminate_study_is_visibly_different_in_the_worklist(open_page, viewport, label):
    flagged = _study(accession="ACC-FLAG", probability=0.91, image=WRIST_JPEG[0].read_bytes())
    unsure = _study(accession="ACC-UNSURE", probability=0.52, image=WRIST_JPEG[1].read_bytes())
    _study(accession="ACC-NORM", probability=0.12, image=WRIST_JPEG[2].read_bytes())
    UserFactory(username="stella", role="staff")
    browser = open_page(viewport)
    browser.login("stella", PASSWORD)
    page = browser.page

    rows = page.locator("#worklist-table tbody tr")
    assert [rows.nth(i).get_attribute("data-study-id") for i in range(3)][:2] == [
        str(flagged.pk),
        str(unsure.pk),
    ]
    row = page.locator(f'tr[data-study-id="{unsure.pk}"]')
    assert row.get_attribute("class") == "row-indeterminate"
    assert row.locator('[data-flag="indeterminate"]').inner_text().strip() == "? Needs a read"
    assert row.locator('[data-flag="indeterminate"]').get_attribute("title") == (
        "Indeterminate — needs a radiologist's read"
    )
    assert "Indeterminate: no call" in row.inner_text()
    if label == "desktop":  # narrower screens keep the band drawn on the bar, its figures on the study page
        assert "band 35\N{EN DASH}65 %" in row.inner_text()
    assert row.locator(".prob-band").count() == 1
    assert row.locator(".is-abnormal, .text-bg-danger").count() == 0
    # What the eye sees: a dashed amber edge and an amber bar, not the flagged row's solid red.
    edge = row.locator("td").first.evaluate("cell => getComputedStyle(cell).borderLeftStyle")
    flagged_edge = page.locator(f'tr[data-study-id="{flagged.pk}"] td').first.evaluate(
        "cell => getComputedStyle(cell).borderLeftStyle"
    )
    assert (edge, flagged_edge) == ("dashed", "solid")
    fill = row.locator(".prob-fill").evaluate("bar => getComputedStyle(bar).fill")
    assert fill == "rgb(153, 116, 4)"
    if label == "desktop":  # thumbnails are hidden (and never loaded) below 992 px
        browser.wait_until(
            "[...document.querySelectorAll('img.worklist-thumb')].every(i => i.naturalWidth > 0)"
        )
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    browser.shot(f"indeterminate-worklist-{label}", full_page=False)
    assert browser.problems == []


def test_a_radiologist_rules_on_an_indeterminate_study(open_page):
    unsure = _study(accession="ACC-UNSURE", probability=0.47, image=WRIST_JPEG[1].read_bytes())
    UserFactory(username="rita", role="radiologist")
    browser = open_page(DESKTOP)
    browser.login("rita", PASSWORD)
    page = browser.page
    browser.goto(f"/studies/{unsure.pk}/")
    assert (
        page.get_by_test_id("model-label").inner_text().strip()
        == "? Indeterminate — needs a radiologist's read"
    )
    assert "(35 % to 65 %)" in page.get_by_test_id("tier-explanation").inner_text()
    assert page.locator("#result-heading ~ * .text-bg-danger").count() == 0
    assert page.locator('input[name="decision"][value="confirm"]').count() == 0
    # Every image loaded before the form leaves the page (an image still loading would be aborted).
    browser.wait_until("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
    browser.shot("indeterminate-study")
    page.locator("#final-label-normal").check()
    page.get_by_role("button", name="Record review").click()
    page.wait_for_url(f"**/studies/{unsure.pk}/#review")
    browser.wait_until("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
    assert "Ruling → final label Normal" in page.get_by_test_id("review-history").inner_text()
    assert browser.problems == []
