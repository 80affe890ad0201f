"""The validation card beside every result on the study page, and the admins' model registry page."""

import hashlib

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils.html import strip_tags

from tests.factories import (
    ModelVersionFactory,
    PredictionFactory,
    RadiographFactory,
    StudyResultFactory,
    UserFactory,
    validation_card,
)
from tests.inference.conftest import wrist_entry, write_manifest

pytestmark = pytest.mark.django_db

VALIDATED = "a" * 64
UNVALIDATED = "f" * 64
WEIGHTS = b"stand-in weight file: the registry page hashes files, it never loads them"


def en_dash(text: str) -> str:
    """Intervals print with an en dash; the tests write it as ~ (ruff flags a literal en dash)."""
    return text.replace("~", "\N{EN DASH}")


def login(client, role: str):
    user = UserFactory(role=role)
    client.force_login(user)
    return user


def predicted_study(*, version: str, images: int = 1, demo: bool = False):
    result = StudyResultFactory(model_version=version, demo=demo)
    for _ in range(images):
        PredictionFactory(radiograph=RadiographFactory(study=result.study), model_version=version, demo=demo)
    return result.study


# --- study page ------------------------------------------------------------------------------
def test_the_study_page_shows_the_card_beside_the_result_and_each_image(client):
    login(client, "staff")
    ModelVersionFactory(version=VALIDATED, card=validation_card(version=VALIDATED))
    study = predicted_study(version=VALIDATED, images=2)

    html = client.get(reverse("study_detail", args=[study.pk])).content.decode()

    text = " ".join(strip_tags(html).split())
    assert "Validated on MURA-v1.1 valid, 2026-12-02, 1,199 studies:" in text
    assert en_dash("κ 0.71 (0.67~0.75), AUROC 0.87 (0.85~0.89), sensitivity 78.1 % (74.4~81.4 %),") in text
    assert en_dash("specificity 90.2 % (87.7~92.2 %) at threshold 0.50.") in text
    assert "Wilson score interval" in html
    assert html.count('data-validated="true"') == 3  # the result and both images
    assert "Not validated here" not in html


def test_a_result_without_a_card_is_marked_not_validated_here_and_keeps_the_demo_notice(client):
    login(client, "staff")
    study = predicted_study(version=UNVALIDATED, demo=True)

    html = client.get(reverse("study_detail", args=[study.pk])).content.decode()

    assert html.count('data-validated="false"') == 2  # the result and the image
    assert "Not validated here" in html and "no validation card" in html
    assert 'data-testid="demo-warning"' in html and "demo model — not for clinical use" in html


def test_the_live_part_polled_while_jobs_run_shows_the_card_too(client):
    login(client, "staff")
    ModelVersionFactory(version=VALIDATED, card=validation_card(version=VALIDATED))
    study = predicted_study(version=VALIDATED)
    html = client.get(reverse("study_live", args=[study.pk])).content.decode()
    assert 'data-testid="result-model-card"' in html and "1,199 studies" in html


@pytest.mark.parametrize("url_name", ["study_detail", "study_live"])
def test_cards_add_no_query_per_image(client, url_name):
    login(client, "staff")
    ModelVersionFactory(version=VALIDATED, card=validation_card(version=VALIDATED))
    counts = []
    for images in (1, 6):
        study = predicted_study(version=VALIDATED, images=images)
        with CaptureQueriesContext(connection) as queries:
            assert client.get(reverse(url_name, args=[study.pk])).status_code == 200
        counts.append(len(queries))
    assert counts[0] == counts[1]


# --- model registry page -------------------------------------------------------------------------
@pytest.fixture
def model_dir(settings, tmp_path):
    """XR_WRIST installed (validated version), XR_HAND configured but its file missing."""
    directory = tmp_path / "models"
    directory.mkdir()
    (directory / "WRIST.h5").write_bytes(WEIGHTS)
    write_manifest(
        directory,
        {
            "XR_WRIST": wrist_entry(file="WRIST.h5", name="wrist-irv2", demo=False, threshold=0.45),
            "XR_HAND": wrist_entry(file="HAND.h5", name="hand-demo", preprocessing="imagenet"),
        },
    )
    settings.MSKDETECT_MODEL_DIR = directory
    return directory


@pytest.mark.parametrize(("role", "status"), [("admin", 200), ("staff", 403), ("radiologist", 403)])
def test_the_registry_page_is_for_admins_only(client, model_dir, role, status):
    login(client, role)
    assert client.get(reverse("model_registry")).status_code == status


def test_the_registry_page_sends_anonymous_users_to_log_in(client, model_dir):
    response = client.get(reverse("model_registry"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


def test_only_admins_get_the_models_link(client, model_dir):
    login(client, "staff")
    assert reverse("model_registry") not in client.get(reverse("worklist")).content.decode()
    login(client, "admin")
    assert f'href="{reverse("model_registry")}"' in client.get(reverse("worklist")).content.decode()


def test_the_registry_page_lists_each_model_with_its_version_card_and_roc_plot(client, model_dir):
    login(client, "admin")
    wrist = hashlib.sha256(WEIGHTS).hexdigest()
    ModelVersionFactory(version=wrist, model_name="wrist-irv2", card=validation_card(version=wrist))
    retired = "9" * 64
    ModelVersionFactory(version=retired, model_name="wrist-2024", demo=True)

    html = client.get(reverse("model_registry")).content.decode()

    wrist_section, hand_section = _section(html, "XR_WRIST"), _section(html, "XR_HAND")
    assert "wrist-irv2" in wrist_section and "WRIST.h5" in wrist_section
    assert "✓</span> present" in wrist_section
    assert wrist[:12] in wrist_section and "0.45" in wrist_section and "<code>seed</code>" in wrist_section
    assert "1,199 studies" in wrist_section and 'data-validated="true"' in wrist_section
    assert '<svg class="roc-plot"' in wrist_section and 'points="34.0,208.0 ' in wrist_section
    assert "demo model" not in wrist_section
    assert "hand-demo" in hand_section and "✕</span> missing" in hand_section
    assert "abnormal, normal (softmax)" in wrist_section and "sha256-mismatch" not in wrist_section
    assert "<code>imagenet</code>" in hand_section and "demo model — not for clinical use" in hand_section
    assert 'data-validated="false"' in hand_section and "roc-plot" not in hand_section
    retired_table = html.split('data-testid="retired-versions"', 1)[1]
    assert f'data-version="{retired}"' in retired_table and "wrist-2024" in retired_table
    assert wrist not in retired_table and "Not validated here" in retired_table
    assert " style=" not in html and "<script>" not in html  # the CSP allows neither


def test_a_file_that_differs_from_its_pinned_sha256_is_flagged(client, model_dir):
    login(client, "admin")
    write_manifest(model_dir, {"XR_WRIST": wrist_entry(file="WRIST.h5", sha256="0" * 64)})
    wrist_section = _section(client.get(reverse("model_registry")).content.decode(), "XR_WRIST")
    assert 'data-testid="sha256-mismatch"' in wrist_section
    assert hashlib.sha256(WEIGHTS).hexdigest()[:12] in wrist_section  # the file's real version


def test_the_page_shows_the_manifest_as_install_model_left_it(client, model_dir):
    login(client, "admin")
    assert 'data-body-part="XR_ELBOW"' not in client.get(reverse("model_registry")).content.decode()
    write_manifest(model_dir, {"XR_ELBOW": wrist_entry(file="WRIST.h5", name="elbow-new")})
    html = client.get(reverse("model_registry")).content.decode()
    assert 'data-body-part="XR_ELBOW"' in html and 'data-body-part="XR_WRIST"' not in html


def test_a_broken_manifest_is_reported_on_the_page(client, settings, tmp_path):
    login(client, "admin")
    (tmp_path / "models.toml").write_text("[XR_WRIST\n")
    settings.MSKDETECT_MODEL_DIR = tmp_path
    ModelVersionFactory(version=VALIDATED)
    response = client.get(reverse("model_registry"))
    html = response.content.decode()
    assert response.status_code == 200
    assert "The manifest could not be read" in html and "not valid TOML" in html
    assert f'data-version="{VALIDATED}"' in html


def _section(html: str, body_part: str) -> str:
    start = html.index(f'data-body-part="{body_part}"')
    return html[start : html.index("</section>", start)]


def test_the_django_admin_lists_model_versions_read_only(client):
    login(client, "admin")
    record = ModelVersionFactory(version=VALIDATED, card=validation_card(version=VALIDATED))
    listing = client.get(reverse("admin:studies_modelversion_changelist"))
    assert listing.status_code == 200 and VALIDATED in listing.content.decode()
    detail = client.get(reverse("admin:studies_modelversion_change", args=[record.pk]))
    assert detail.status_code == 200 and "MURA-v1.1 valid" in detail.content.decode()
    assert client.get(reverse("admin:studies_modelversion_add")).status_code == 403
