"""End to end: `install_model --validate-on` → the worker predicts → the card beside the result.

The install writes the entry, the sha256 and the validation card; the worker (the real task, on the
installed model dir) records the version with its card; the study page and the API then show the
card's figures beside the result, and the admin's model registry page lists the model with it.
"""

import hashlib
import io

import pytest
from django.core.management import call_command
from django.urls import reverse

from inference import tasks
from inference.model_card import read_card
from studies.models import StudyStatus
from tests.conftest import SHARED_DATA
from tests.factories import UserFactory
from tests.inference.mura_tree import learnable_studies, write_mura_tree
from tests.inference.test_tasks import add_image, make_study


@pytest.mark.django_db
def test_an_installed_and_validated_model_shows_its_card_beside_its_results(
    settings, tmp_path, tiny_model_file, api_client_for, client
):
    model_dir = tmp_path / "models"
    root = write_mura_tree(
        tmp_path / "mura", learnable_studies(body_parts=("XR_WRIST",), studies_per_label=5)
    )
    call_command(
        "install_model",
        str(tiny_model_file),
        "--body-part",
        "XR_WRIST",
        "--name",
        "hospital-wrist",
        "--model-dir",
        str(model_dir),
        "--validate-on",
        str(root),
        stdout=io.StringIO(),
        stderr=io.StringIO(),
    )
    version = hashlib.sha256(tiny_model_file.read_bytes()).hexdigest()
    card = read_card(model_dir=model_dir, version=version)
    settings.MSKDETECT_MODEL_DIR = model_dir
    study = make_study()
    images = [
        add_image(study, path.read_bytes()) for path in sorted((SHARED_DATA / "png16").glob("*.png"))[:2]
    ]

    tasks.predict_images([image.id for image in images])

    study.refresh_from_db()
    assert study.status == StudyStatus.PREDICTED, study.error
    body = api_client_for(UserFactory(role="staff")).get(f"/api/v1/studies/{study.pk}/").json()
    result_card = body["result"]["model_card"]
    assert body["result"]["model_version"] == version
    assert result_card["validated"] is True
    assert result_card["studies"] == card["validated_on"]["studies"] == 10
    assert result_card["kappa"] == card["metrics"]["kappa"]
    assert result_card["auroc"] == card["metrics"]["auroc"]
    assert all(image["prediction"]["model_card"]["validated"] for image in body["images"])

    client.force_login(UserFactory(role="staff"))
    page = client.get(reverse("study_detail", args=[study.pk])).content.decode()
    assert "Validated" in page and "MURA-v1.1 valid" in page and "10 studies" in page
    client.force_login(UserFactory(role="admin", username="chief"))
    registry_page = client.get(reverse("model_registry")).content.decode()
    assert "hospital-wrist" in registry_page and version[:12] in registry_page
