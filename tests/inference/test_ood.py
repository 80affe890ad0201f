"""The out-of-distribution score: reference files, separation on a tiny model, the benchmark command."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command

from inference.demo import build_demo_models
from inference.ood import (
    NO_REFERENCE,
    OodReferenceError,
    assess_images,
    fit_model_reference,
    image_statistics,
    read_reference,
    reference_path,
    write_reference,
)
from inference.ood_samples import (
    cross_sections,
    decode_reference,
    photographs,
    reference_paths,
    screens,
    shared_radiographs,
)
from inference.predictor import Predictor
from inference.registry import LoadedModel, ModelRegistry, file_sha256
from tests.conftest import SHARED_DATA
from tests.inference.conftest import build_tiny_cnn, wrist_entry, write_manifest


@pytest.fixture(scope="module")
def tiny_loaded(tmp_path_factory) -> LoadedModel:
    model_dir = tmp_path_factory.mktemp("ood-tiny")
    build_tiny_cnn().save(model_dir / "tiny.keras")
    write_manifest(model_dir, {"XR_WRIST": wrist_entry(name="tiny-wrist")})
    return ModelRegistry(model_dir).get("XR_WRIST")


@pytest.fixture(scope="module")
def reference_images():
    paths = reference_paths(SHARED_DATA, body_part="XR_WRIST")
    return decode_reference(paths, root=SHARED_DATA)


@pytest.fixture(scope="module")
def tiny_reference(tiny_loaded, reference_images):
    images, names, _ = reference_images
    return fit_model_reference(loaded=tiny_loaded, images=images, names=names, source=str(SHARED_DATA))


def test_the_default_reference_is_the_shared_upper_limb_radiographs(reference_images):
    images, names, skipped = reference_images
    assert skipped == []
    assert len(images) == 13
    assert sum(name.startswith("png16/") for name in names) == 9
    # The hip, the tibia and the cervical spine are not what an upper-limb model knows.
    assert not {"dicom/RG2_JPLL.dcm", "dicom/RG3_J2KR.dcm", "dicom/CR1_6154_noext"} & set(names)


def test_reference_file_round_trip(tmp_path, tiny_loaded, tiny_reference):
    path = write_reference(model_dir=tmp_path, reference=tiny_reference)

    assert path == tmp_path / "ood" / f"{tiny_loaded.version}.npz"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    loaded = read_reference(model_dir=tmp_path, version=tiny_loaded.version)
    assert loaded.threshold == pytest.approx(tiny_reference.threshold)
    assert loaded.meta["images"] == 13 and loaded.meta["feature_dim"] == 8
    assert loaded.meta["sources"] == tiny_reference.meta["sources"]
    np.testing.assert_allclose(loaded.loo_scores, tiny_reference.loo_scores)
    image = shared_radiographs(SHARED_DATA)[0].image
    features = Predictor(tiny_loaded).pooled_features([image])
    before = assess_images(reference=tiny_reference, features=features, images=[image])[0]
    after = assess_images(reference=loaded, features=features, images=[image])[0]
    assert after.score == pytest.approx(before.score)
    assert after.threshold == pytest.approx(tiny_reference.threshold)


def test_missing_damaged_and_misplaced_references(tmp_path, tiny_loaded, tiny_reference):
    version = tiny_loaded.version
    assert read_reference(model_dir=tmp_path, version=version) is None
    path = reference_path(model_dir=tmp_path, version=version)
    path.parent.mkdir()
    path.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(OodReferenceError, match="cannot be read"):
        read_reference(model_dir=tmp_path, version=version)
    other = "0" * 64
    write_reference(model_dir=tmp_path, reference=tiny_reference)
    shutil.copy(path, reference_path(model_dir=tmp_path, version=other))
    with pytest.raises(OodReferenceError, match="is for model version"):
        read_reference(model_dir=tmp_path, version=other)
    with pytest.raises(OodReferenceError, match="sha256"):
        reference_path(model_dir=tmp_path, version="../../etc/passwd")


def test_without_a_reference_no_score_is_computed():
    image = shared_radiographs(SHARED_DATA)[0].image
    (result,) = assess_images(reference=None, features=None, images=[image])
    assert (result.score, result.threshold, result.note) == (None, None, NO_REFERENCE)
    assert result.out_of_distribution is False


def test_photos_screenshots_and_slices_score_higher_than_radiographs(tiny_loaded, tiny_reference):
    predictor = Predictor(tiny_loaded)
    pages = [sample for sample in screens() if sample.name.startswith(("text page", "UI screenshot"))]
    others = [*photographs()[:3], *pages, *cross_sections()[:4]]
    images = [sample.image for sample in others]
    features = predictor.pooled_features(images)
    scores = [
        result.score for result in assess_images(reference=tiny_reference, features=features, images=images)
    ]
    held_out = np.asarray(tiny_reference.loo_scores)  # each radiograph scored without itself

    assert np.median(scores) > 2 * np.median(held_out)
    assert min(scores) > np.median(held_out)
    # Colour photographs, rendered text pages and UI screenshots are far outside: above the threshold.
    assert all(score > tiny_reference.threshold for score in scores[: 3 + len(pages)])
    assert np.mean(held_out <= tiny_reference.threshold) >= 0.9


def test_image_statistics_see_colour_and_text():
    radiograph = shared_radiographs(SHARED_DATA)[0].image
    photo, page = photographs()[0].image, screens()[2].image
    names = ("colourfulness", "white_fraction")
    grey, colour, text = (image_statistics(i) for i in (radiograph, photo, page))
    assert colour[0] > 0.2 > grey[0]
    assert text[6] > 0.5 > grey[6], names


def test_build_demo_models_writes_each_models_reference(tmp_path):
    results = build_demo_models(out_dir=tmp_path, body_parts=("XR_WRIST",), train_count=16, epochs=1)

    version = file_sha256(path=results[0].path)
    reference = read_reference(model_dir=tmp_path, version=version)
    assert reference is not None and reference.meta["body_part"] == "XR_WRIST"
    assert results[0].ood_threshold == pytest.approx(reference.threshold)
    assert reference.meta["feature_dim"] == 64  # the demo CNN's last conv: 32 channels, mean and max


def test_benchmark_command_separates_radiographs_from_the_rest_on_the_demo_models():
    out = io.StringIO()
    call_command("benchmark_ood", "--demo", "--body-parts", "XR_WRIST", stdout=out, stderr=io.StringIO())

    report = json.loads(out.getvalue())
    (wrist,) = report["models"]
    figures = wrist["radiographs_vs_not"]
    assert wrist["reference"]["source"] == "installed"
    assert figures["radiographs"] == 13 and figures["not_radiographs"] >= 30
    assert figures["auroc"] >= 0.95, figures
    assert set(figures["per_kind_auroc"]) == {"photograph", "screenshot", "ct", "mr"}
    assert 0.0 <= wrist["own_vs_other_body_parts"]["auroc"] <= 1.0
    assert report["min_auroc_radiographs_vs_not"] == figures["auroc"]


def test_benchmark_command_fits_a_reference_for_a_model_without_one(tiny_loaded):
    out = io.StringIO()
    call_command("benchmark_ood", "--model-dir", str(tiny_loaded.spec.path.parent), stdout=out)

    (model,) = json.loads(out.getvalue())["models"]
    assert model["reference"]["source"].startswith("fitted here")
    assert model["radiographs_vs_not"]["auroc"] > 0.8
    assert not Path(tiny_loaded.spec.path.parent, "ood").exists()  # a benchmark writes nothing
