"""Predictor: batched P(abnormal) per image, the MURA study rule, and what each result carries."""

from __future__ import annotations

import numpy as np
import pytest

from inference import predictor as predictor_module
from inference.gradcam import gradcam_heatmaps
from inference.predictor import Predictor
from inference.preprocessing import UnsupportedInputSize, build_batch, get_profile
from inference.registry import ManifestError, ModelRegistry
from tests.inference.conftest import build_tiny_cnn, gray_image, wrist_entry, write_manifest


def _images(count: int, *, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        # Different sizes and brightness, so each image gives the tiny CNN a different answer.
        height, width = 180 + 20 * index, 240 - 10 * index
        base = rng.integers(0, 256, size=(height, width)) * (0.3 + 0.1 * index)
        images.append(gray_image(np.clip(base, 0, 255).astype(np.uint8)))
    return images


def _direct_outputs(model, images) -> np.ndarray:
    profile = get_profile("seed")
    return np.asarray(model(np.stack([profile(image) for image in images]), training=False))


def test_study_prediction_is_the_mean_of_per_image_abnormal_probabilities(tiny_model_dir):
    loaded = ModelRegistry(tiny_model_dir).get("XR_WRIST")
    images = _images(3)

    result = Predictor(loaded).predict(images)

    expected = _direct_outputs(loaded.model, images)[:, 0]
    assert [p.abnormal_probability for p in result.images] == pytest.approx(expected.tolist(), abs=1e-6)
    assert np.ptp(expected) > 0.01, "the images must get different answers for the test to mean anything"
    assert result.abnormal_probability == pytest.approx(float(np.mean(expected)), abs=1e-6)
    assert result.label == ("abnormal" if result.abnormal_probability >= 0.5 else "normal")
    for prediction in result.images:
        assert prediction.label == ("abnormal" if prediction.abnormal_probability >= 0.5 else "normal")
    assert (result.model_name, result.model_version, result.demo) == ("tiny-wrist", loaded.version, True)
    assert (result.threshold, result.preprocessing) == (0.5, "seed")
    assert result.preprocess_ms > 0 and result.inference_ms > 0


def test_threshold_decides_the_label(tiny_model_dir):
    images = _images(2)
    probability = (
        Predictor(ModelRegistry(tiny_model_dir).get("XR_WRIST")).predict(images).abnormal_probability
    )

    write_manifest(tiny_model_dir, {"XR_WRIST": wrist_entry(threshold=round(probability - 0.001, 6))})
    assert Predictor(ModelRegistry(tiny_model_dir).get("XR_WRIST")).predict(images).label == "abnormal"
    write_manifest(tiny_model_dir, {"XR_WRIST": wrist_entry(threshold=round(probability + 0.001, 6))})
    assert Predictor(ModelRegistry(tiny_model_dir).get("XR_WRIST")).predict(images).label == "normal"


def test_abnormal_probability_follows_the_manifest_label_order(tiny_model_dir):
    images = _images(2)
    write_manifest(tiny_model_dir, {"XR_WRIST": wrist_entry(labels=["normal", "abnormal"])})
    loaded = ModelRegistry(tiny_model_dir).get("XR_WRIST")

    result = Predictor(loaded).predict(images)

    expected = _direct_outputs(loaded.model, images)[:, 1]
    assert [p.abnormal_probability for p in result.images] == pytest.approx(expected.tolist(), abs=1e-6)


def test_chunking_and_padding_do_not_change_results(tiny_model_dir):
    loaded = ModelRegistry(tiny_model_dir).get("XR_WRIST")
    images = _images(7)

    whole = Predictor(loaded, batch_size=16).predict(images)
    chunked = Predictor(loaded, batch_size=3).predict(images)  # chunks 3, 3, 1 (padded to 1)

    assert [p.abnormal_probability for p in chunked.images] == pytest.approx(
        [p.abnormal_probability for p in whole.images], abs=1e-6
    )


def test_studies_batched_together_get_their_own_results(tiny_model_dir):
    loaded = ModelRegistry(tiny_model_dir).get("XR_WRIST")
    images = _images(5)
    predictor = Predictor(loaded, batch_size=4)

    first, second = predictor.predict_studies([images[:2], images[2:]])

    assert first.images == predictor.predict(images[:2]).images
    assert second.abnormal_probability == pytest.approx(predictor.predict(images[2:]).abnormal_probability)
    assert len(second.images) == 3


def test_a_plain_keras_model_can_be_benchmarked():
    model = build_tiny_cnn(seed=3)
    images = _images(2)

    result = Predictor(model, batch_size=2).predict(images)

    expected = _direct_outputs(model, images)[:, 0]
    assert [p.abnormal_probability for p in result.images] == pytest.approx(expected.tolist(), abs=1e-6)
    assert result.model_name == "tiny_cnn"
    assert result.model_version == "unversioned"


def test_empty_study_is_rejected(tiny_model_dir):
    with pytest.raises(ValueError, match="at least one image"):
        Predictor(ModelRegistry(tiny_model_dir).get("XR_WRIST")).predict([])


def test_one_run_gives_probabilities_and_the_grad_cam_maps_of_a_full_grad_cam(tiny_model_dir):
    loaded = ModelRegistry(tiny_model_dir).get("XR_WRIST")
    predictor = Predictor(loaded, batch_size=3)  # chunks 3, 3, 1
    batch = predictor.preprocess(_images(7))

    result = predictor.run(batch, heatmaps=True)

    np.testing.assert_allclose(result.probabilities, predictor.abnormal_probabilities(batch), atol=1e-6)
    expected = gradcam_heatmaps(loaded.model, batch, class_index=loaded.spec.abnormal_index)
    assert result.heatmaps.shape == expected.shape == (7, 26, 26)
    np.testing.assert_allclose(result.heatmaps, expected, atol=1e-5)
    assert result.heatmaps.max() == pytest.approx(1.0)  # normalised: each map's peak is 1
    assert predictor.run(batch, heatmaps=False).heatmaps is None


def test_a_grad_cam_failure_keeps_the_probabilities(tiny_model_dir, monkeypatch, caplog):
    loaded = ModelRegistry(tiny_model_dir).get("XR_WRIST")
    predictor = Predictor(loaded)
    batch = predictor.preprocess(_images(2))

    def broken(*args, **kwargs):
        raise RuntimeError("no gradient")

    monkeypatch.setattr(predictor_module, "cams_from_features", broken)
    result = predictor.run(batch, heatmaps=True)

    assert result.heatmaps is None
    np.testing.assert_allclose(result.probabilities, predictor.abnormal_probabilities(batch))
    assert "Grad-CAM failed for tiny-wrist" in caplog.text


def _sigmoid_cnn(*, negate: bool = False):
    """A small sigmoid CNN at a non-square input size; ``negate`` gives the model of 1 - its output."""
    import keras

    keras.utils.set_random_seed(5)
    model = keras.Sequential(
        [
            keras.Input(shape=(160, 192, 3)),
            keras.layers.AveragePooling2D(4),
            keras.layers.Conv2D(4, 3, activation="relu", name="sigmoid_conv"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    kernel, bias = model.layers[-1].get_weights()
    sign = -1.0 if negate else 1.0
    # Centred on these test images, so the outputs spread over (0, 1) instead of saturating.
    model.layers[-1].set_weights([sign * kernel * 10.0, sign * (bias - 6.0)])
    return model


def _sigmoid_loaded(tmp_path, *, negate: bool, labels: list[str]):
    directory = tmp_path / ("negated" if negate else "plain")
    directory.mkdir()
    _sigmoid_cnn(negate=negate).save(directory / "sigmoid.keras")
    write_manifest(
        directory,
        {
            "XR_WRIST": wrist_entry(
                file="sigmoid.keras", preprocessing="unit-v1", output="sigmoid", labels=labels
            )
        },
    )
    return ModelRegistry(directory).get("XR_WRIST")


def test_input_size_comes_from_the_model_and_a_sigmoid_p_abnormal_model_works_end_to_end(tmp_path):
    loaded = _sigmoid_loaded(tmp_path, negate=False, labels=["abnormal"])
    images = _images(4)
    predictor = Predictor(loaded, batch_size=3)

    result = predictor.predict(images)

    assert predictor.input_size == (160, 192)
    batch = build_batch(images=images, profile="unit-v1", size=(160, 192))
    np.testing.assert_array_equal(predictor.preprocess(images), batch)
    expected = np.asarray(loaded.model(batch, training=False))[:, 0]
    assert [p.abnormal_probability for p in result.images] == pytest.approx(expected.tolist(), abs=1e-6)
    assert np.ptp(expected) > 0.01
    assert result.abnormal_probability == pytest.approx(float(np.mean(expected)), abs=1e-6)
    assert (result.preprocessing, result.heatmaps_available) == ("unit-v1", True)


def test_a_sigmoid_p_normal_model_gives_the_probabilities_and_heat_maps_of_its_p_abnormal_twin(tmp_path):
    # sigmoid(-z) = 1 - sigmoid(z): the negated network says P(abnormal) where the first says P(normal).
    p_normal = _sigmoid_loaded(tmp_path, negate=False, labels=["normal"])
    p_abnormal = _sigmoid_loaded(tmp_path, negate=True, labels=["abnormal"])
    normal_predictor, abnormal_predictor = Predictor(p_normal), Predictor(p_abnormal)
    batch = normal_predictor.preprocess(_images(4))

    from_normal = normal_predictor.run(batch, heatmaps=True)
    from_abnormal = abnormal_predictor.run(batch, heatmaps=True)

    raw = np.asarray(p_normal.model(batch, training=False))[:, 0]
    np.testing.assert_allclose(from_normal.probabilities, 1.0 - raw, atol=1e-6)
    np.testing.assert_allclose(from_normal.probabilities, from_abnormal.probabilities, atol=1e-6)
    assert from_normal.heatmaps.shape == (4, 38, 46)
    np.testing.assert_allclose(from_normal.heatmaps, from_abnormal.heatmaps, atol=1e-5)
    # The abnormal class's map is not the map of the output unit itself (the normal evidence).
    unit_maps = gradcam_heatmaps(p_normal.model, batch, class_index=0)
    assert np.abs(unit_maps - from_normal.heatmaps).max() > 0.1


def test_a_model_that_gives_more_outputs_than_the_manifest_names_is_refused(tiny_model_dir):
    write_manifest(tiny_model_dir, {"XR_WRIST": wrist_entry(output="sigmoid", labels=["abnormal"])})

    with pytest.raises(
        ManifestError, match=r"\[XR_WRIST\] describes 1 sigmoid output.*gives 2 outputs per image"
    ):
        Predictor(ModelRegistry(tiny_model_dir).get("XR_WRIST"))


def test_a_seed_model_at_another_input_size_is_refused(tmp_path):
    _sigmoid_cnn().save(tmp_path / "sigmoid.keras")
    write_manifest(
        tmp_path, {"XR_WRIST": wrist_entry(file="sigmoid.keras", output="sigmoid", labels=["abnormal"])}
    )

    with pytest.raises(UnsupportedInputSize, match=r"'seed' makes 224x224 inputs only.*160x192"):
        Predictor(ModelRegistry(tmp_path).get("XR_WRIST"))


def _with_band(model_dir, *, low: float, high: float, threshold: float = 0.5) -> None:
    path = write_manifest(model_dir, {"XR_WRIST": wrist_entry(threshold=threshold)})
    line = f"threshold = {threshold!r}"
    path.write_text(path.read_text().replace(line, f"{line}\nindeterminate = [{low!r}, {high!r}]"))


def test_the_band_gives_three_tiers_for_the_study_and_each_image_at_its_edges(tiny_model_dir):
    images = _images(3)
    plain = Predictor(ModelRegistry(tiny_model_dir).get("XR_WRIST")).predict(images)
    assert plain.indeterminate is None
    p = plain.abnormal_probability
    assert 0.02 < p < 0.98, "the edges below need room on both sides of the study's probability"

    def predict(low: float, high: float, threshold: float):
        _with_band(tiny_model_dir, low=low, high=high, threshold=threshold)
        return Predictor(ModelRegistry(tiny_model_dir).get("XR_WRIST")).predict(images)

    inside = predict(p - 0.01, p + 0.01, threshold=p)
    assert (inside.label, inside.indeterminate, inside.threshold) == (
        "indeterminate",
        (p - 0.01, p + 0.01),
        p,
    )
    assert inside.abnormal_probability == pytest.approx(p, abs=1e-12)  # the band changes the label, never P
    assert predict(p, p + 0.01, threshold=p).label == "indeterminate"  # P == low: in the band
    assert predict(p - 0.01, p, threshold=p).label == "abnormal"  # P == high: abnormal
    assert predict(p + 0.001, p + 0.01, threshold=p + 0.005).label == "normal"  # below the band
    assert predict(p - 0.01, p - 0.001, threshold=p - 0.005).label == "abnormal"  # above it
    # Each image gets its own tier by the same rule.
    spec = ModelRegistry(tiny_model_dir).spec("XR_WRIST")
    for image in predict(p - 0.01, p + 0.01, threshold=p).images:
        assert image.label == spec.label_for(image.abnormal_probability)
