"""The worker and the OOD score: needs_human_read with its reason, never a flag on its own, shown."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from django.urls import reverse
from PIL import Image

from inference import tasks
from inference.ood import NO_REFERENCE, fit_model_reference, write_reference
from inference.ood_samples import decode_reference, photographs, reference_paths
from inference.registry import ModelRegistry
from studies.models import ImageStatus, Prediction, StudyResult, StudyStatus
from tests.conftest import SHARED_DATA
from tests.inference.test_tasks import WRISTS, add_image, make_study
from tests.inference.tiny_models import write_tiny_model_dir


def _png(pixels) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def referenced_dir(tmp_path_factory) -> Path:
    """The tiny worker models, the wrist with an OOD reference fitted on the shared radiographs."""
    directory = write_tiny_model_dir(tmp_path_factory.mktemp("ood-worker"))
    loaded = ModelRegistry(directory).get("XR_WRIST")
    images, names, _ = decode_reference(reference_paths(SHARED_DATA, body_part="XR_WRIST"), root=SHARED_DATA)
    write_reference(
        model_dir=directory,
        reference=fit_model_reference(loaded=loaded, images=images, names=names, source=str(SHARED_DATA)),
    )
    return directory


@pytest.fixture
def model_dir(settings, referenced_dir) -> Path:
    settings.MSKDETECT_MODEL_DIR = referenced_dir
    return referenced_dir


PHOTO = _png(photographs()[0].image.pixels)  # skimage astronaut, a colour photograph


@pytest.mark.django_db
def test_an_out_of_distribution_image_needs_a_human_read_and_stays_out_of_the_result(model_dir):
    study = make_study()
    wrist, photo = add_image(study, WRISTS[0].read_bytes()), add_image(study, PHOTO)

    tasks.predict_images([wrist.id, photo.id])

    wrist.refresh_from_db(), photo.refresh_from_db(), study.refresh_from_db()
    assert wrist.status == ImageStatus.DONE and wrist.error == ""
    assert photo.status == ImageStatus.NEEDS_HUMAN_READ
    assert photo.error.startswith("Does not look like a wrist radiograph this model knows: OOD score ")
    kept, left_out = Prediction.objects.get(radiograph=wrist), Prediction.objects.get(radiograph=photo)
    assert left_out.ood_score > left_out.ood_threshold > 0
    assert f"{left_out.ood_score:.1f} > {left_out.ood_threshold:.1f}" in photo.error
    assert kept.ood_score <= kept.ood_threshold == left_out.ood_threshold
    # The study's P(abnormal) and flag come from the in-distribution image only.
    assert study.status == StudyStatus.PREDICTED
    result = StudyResult.objects.get(study=study)
    assert result.abnormal_probability == pytest.approx(kept.abnormal_probability)


@pytest.mark.django_db
def test_an_ood_image_never_flags_a_study_on_its_own(model_dir, staff_user, api_client_for):
    study = make_study()
    photo = add_image(study, PHOTO)

    tasks.predict_images([photo.id])

    study.refresh_from_db()
    assert Prediction.objects.get(radiograph=photo).label  # predicted, and stored...
    assert study.status == StudyStatus.NEEDS_HUMAN_READ  # ...but no automatic result: a human reads it
    assert not StudyResult.objects.filter(study=study).exists()
    data = api_client_for(staff_user).get(f"/api/v1/studies/{study.id}/").json()
    assert (data["status"], data["flagged"], data["result"]) == ("needs_human_read", False, None)
    flagged = api_client_for(staff_user).get("/api/v1/studies/?flagged=true").json()
    assert study.id not in [row["id"] for row in flagged["results"]]


@pytest.mark.django_db
def test_without_a_reference_the_prediction_says_so(settings, tmp_path, referenced_dir):
    directory = tmp_path / "models"
    shutil.copytree(referenced_dir, directory, ignore=shutil.ignore_patterns("ood"))
    settings.MSKDETECT_MODEL_DIR = directory
    study = make_study()
    photo = add_image(study, PHOTO)

    tasks.predict_images([photo.id])

    photo.refresh_from_db()
    prediction = Prediction.objects.get(radiograph=photo)
    assert (prediction.ood_score, prediction.ood_threshold, prediction.ood_note) == (None, None, NO_REFERENCE)
    assert photo.status == ImageStatus.DONE


@pytest.mark.django_db
def test_a_damaged_reference_does_not_stop_predictions(settings, tmp_path, referenced_dir):
    directory = tmp_path / "models"
    shutil.copytree(referenced_dir, directory)
    for path in (directory / "ood").iterdir():
        path.write_bytes(b"not a zip")
    settings.MSKDETECT_MODEL_DIR = directory
    image = add_image(make_study(), WRISTS[0].read_bytes())

    tasks.predict_images([image.id])

    prediction = Prediction.objects.get(radiograph=image)
    assert prediction.ood_score is None and prediction.ood_note.startswith("OOD score not computed:")


@pytest.mark.django_db
def test_the_api_and_the_study_page_say_why(model_dir, client, staff_user, api_client_for):
    study = make_study()
    wrist, photo = add_image(study, WRISTS[0].read_bytes()), add_image(study, PHOTO)
    tasks.predict_images([wrist.id, photo.id])
    prediction = Prediction.objects.get(radiograph=photo)

    data = api_client_for(staff_user).get(f"/api/v1/studies/{study.id}/").json()
    images = {image["id"]: image for image in data["images"]}
    assert images[photo.id]["status"] == "needs_human_read"
    assert "does not look like a wrist radiograph" in images[photo.id]["error"].lower()
    assert images[photo.id]["prediction"]["ood_score"] == pytest.approx(prediction.ood_score)
    assert images[photo.id]["prediction"]["out_of_distribution"] is True
    assert images[wrist.id]["prediction"]["out_of_distribution"] is False

    client.force_login(staff_user)
    page = client.get(reverse("study_detail", args=[study.id])).content.decode()
    assert 'data-testid="ood-warning"' in page
    assert "<strong>Image 2</strong>" in page
    assert f"OOD score {prediction.ood_score:.1f} &gt; {prediction.ood_threshold:.1f}" in page
