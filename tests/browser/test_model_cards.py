"""Validation cards in a real browser: the card beside a result, and the admins' model registry page
with its ROC plot, under the strict CSP, with no console error and no failed request."""

import hashlib

import pytest

from studies.models import ImageStatus, Study
from tests.browser.conftest import DESKTOP, TABLET
from tests.conftest import SHARED_DATA
from tests.factories import (
    PASSWORD,
    ModelVersionFactory,
    PredictionFactory,
    RadiographFactory,
    StudyFactory,
    StudyResultFactory,
    UserFactory,
    validation_card,
)
from tests.inference.conftest import wrist_entry, write_manifest

pytestmark = pytest.mark.usefixtures("transactional_db")

WEIGHTS = b"stand-in weight file: the registry page hashes files, it never loads them"
VERSION = hashlib.sha256(WEIGHTS).hexdigest()
WRIST_PNG = sorted((SHARED_DATA / "png16").glob("*.png"))


@pytest.fixture
def validated_ward(settings, tmp_path):
    """An installed, validated wrist model that made one study's result; a missing hand model; an
    older wrist version, no longer installed, that made another study's result."""
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    (model_dir / "WRIST.h5").write_bytes(WEIGHTS)
    write_manifest(
        model_dir,
        {
            "XR_WRIST": wrist_entry(file="WRIST.h5", name="wrist-irv2", demo=False),
            "XR_HAND": wrist_entry(file="HAND.h5", name="hand-demo"),
        },
    )
    settings.MSKDETECT_MODEL_DIR = model_dir
    ModelVersionFactory(version=VERSION, model_name="wrist-irv2", card=validation_card(version=VERSION))
    ModelVersionFactory(version="9" * 64, model_name="wrist-2024", demo=True)
    study = StudyFactory(accession_number="ACC-CARD", status=Study.Status.PREDICTED)
    image = RadiographFactory(study=study, content=WRIST_PNG[0].read_bytes(), status=ImageStatus.DONE)
    made_by = {"model_name": "wrist-irv2", "model_version": VERSION, "abnormal_probability": 0.82}
    PredictionFactory(radiograph=image, **made_by)
    StudyResultFactory(study=study, **made_by)
    return study


def test_study_page_shows_the_card_and_the_registry_page_draws_the_roc_plot(open_page, validated_ward):
    UserFactory(username="ada", first_name="Ada", last_name="Admin", role="admin")
    browser = open_page(DESKTOP)
    browser.login("ada", PASSWORD)
    page = browser.page

    browser.goto(f"/studies/{validated_ward.pk}/")
    card = page.get_by_test_id("result-model-card")
    assert card.is_visible()
    text = card.inner_text()
    assert "Validated on MURA-v1.1 valid, 2026-12-02, 1,199 studies" in text
    assert "AUROC 0.87" in text and "at threshold 0.50" in text
    assert page.locator('figure [data-testid="model-card"][data-validated="true"]').is_visible()
    browser.wait_until("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
    browser.shot("study-model-card-desktop")

    page.get_by_role("link", name="Models").click()
    page.wait_for_url("**/models/")
    wrist = page.locator('[data-testid="installed-model"][data-body-part="XR_WRIST"]')
    assert "present" in wrist.inner_text() and "1,199 studies" in wrist.inner_text()
    plot = wrist.locator("svg.roc-plot")
    assert plot.is_visible()
    box = plot.bounding_box()
    assert box["width"] > 150 and box["height"] > 150
    # The curve is drawn (stroke from the stylesheet, not a style attribute the CSP would block).
    assert plot.locator("polyline").evaluate("el => getComputedStyle(el).stroke") != "none"
    hand = page.locator('[data-testid="installed-model"][data-body-part="XR_HAND"]')
    assert "missing" in hand.inner_text() and "Not validated here" in hand.inner_text()
    assert page.get_by_test_id("retired-versions").get_by_text("wrist-2024").is_visible()
    browser.shot("model-registry-desktop")
    assert browser.problems == []


def test_registry_page_fits_a_tablet(open_page, validated_ward):
    UserFactory(username="ada", role="admin")
    browser = open_page(TABLET)
    browser.login("ada", PASSWORD)
    browser.goto("/models/")
    assert browser.page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    browser.shot("model-registry-tablet")
    assert browser.problems == []
