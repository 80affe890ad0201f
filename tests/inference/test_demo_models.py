"""Demo models: trained on synthetic images, learn the sign, load through the registry as demo."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from django.core.management import call_command

from inference.decoding import decode_image
from inference.demo import build_demo_models, synthetic_dataset
from inference.gradcam import gradcam_heatmaps
from inference.predictor import Predictor
from inference.registry import ModelRegistry
from tests.conftest import SHARED_DATA

ONE_MEGABYTE = 1024 * 1024


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-models")
    # A quick, barely trained first build that the command's real build must replace.
    build_demo_models(out_dir=out, body_parts=("XR_WRIST", "XR_ELBOW"), train_count=16, epochs=1)
    call_command("build_demo_models", "--out", str(out), "--body-parts", "XR_WRIST", "XR_HUMERUS")
    return out


def test_demo_build_writes_small_models_and_a_demo_manifest(demo_dir):
    registry = ModelRegistry(demo_dir)

    assert registry.body_parts() == ["XR_HUMERUS", "XR_WRIST"]
    for body_part in registry.body_parts():
        spec = registry.spec(body_part)
        assert spec.demo is True
        assert spec.preprocessing == "seed"
        assert (spec.threshold, spec.indeterminate) == (0.5, (0.35, 0.65))
        assert spec.path.stat().st_size < ONE_MEGABYTE
    assert [path.name for path in demo_dir.iterdir() if path.name.startswith(".")] == []


@pytest.mark.parametrize("body_part", ["XR_WRIST", "XR_HUMERUS"])
def test_demo_model_tells_abnormal_from_normal_synthetic_studies(demo_dir, body_part):
    loaded = ModelRegistry(demo_dir).get(body_part)
    # Images the model never saw: another generator seed than any build uses.
    images, labels = synthetic_dataset(body_part=body_part, count=128, rng=np.random.default_rng(123))

    result = Predictor(loaded).predict(images)

    predicted_abnormal = np.array([p.label == "abnormal" for p in result.images])
    accuracy = float(np.mean(predicted_abnormal == (labels == 0)))
    assert accuracy >= 0.9, f"held-out synthetic accuracy {accuracy:.2f}"
    assert result.demo is True
    assert result.model_name == f"demo-{body_part.removeprefix('XR_').lower()}"


def test_demo_model_gives_probabilities_on_real_radiographs(demo_dir):
    loaded = ModelRegistry(demo_dir).get("XR_WRIST")
    paths = [
        *sorted((SHARED_DATA / "png16").glob("*.png"))[:3],
        *sorted((SHARED_DATA / "jpeg").glob("*.jpg")),
        *sorted((SHARED_DATA / "dicom").iterdir()),
    ]
    images = [decode_image(path.read_bytes()) for path in paths]

    results = Predictor(loaded).predict_studies([[image] for image in images])

    probabilities = np.array([result.abnormal_probability for result in results])
    assert len(results) == len(paths)
    assert np.isfinite(probabilities).all()
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    assert all(result.label in ("abnormal", "normal") and result.demo for result in results)


def test_rebuilding_replaces_the_previous_build(demo_dir, tmp_path):
    out = tmp_path / "demo"
    shutil.copytree(demo_dir, out)  # the module's build stays intact for the other tests

    build_demo_models(out_dir=out, body_parts=("XR_HUMERUS",), train_count=16, epochs=1)

    registry = ModelRegistry(out)
    assert registry.body_parts() == ["XR_HUMERUS"]
    assert registry.available("XR_HUMERUS")
    assert registry.get("XR_HUMERUS").spec.demo
    assert [path.name for path in out.iterdir() if path.name.startswith(".")] == []


def test_demo_model_heatmaps_work_for_its_sequential_layout(demo_dir):
    loaded = ModelRegistry(demo_dir).get("XR_WRIST")
    images, _ = synthetic_dataset(body_part="XR_WRIST", count=2, rng=np.random.default_rng(5))
    batch = Predictor(loaded).preprocess(images)

    heatmaps = gradcam_heatmaps(loaded.model, batch, class_index=loaded.spec.abnormal_index)

    assert heatmaps.shape == (2, 28, 28)  # the demo model's last_conv at 224 / 8
    assert heatmaps.min() >= 0 and heatmaps.max() <= 1
