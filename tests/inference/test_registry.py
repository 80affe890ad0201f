"""Registry: manifest, lazy cached loading, checksums, and clear errors for bad installs."""

from __future__ import annotations

import hashlib
import shutil
import threading
from pathlib import Path

import keras
import numpy as np
import pytest

from inference.registry import (
    BODY_PARTS,
    ManifestError,
    ModelLoadError,
    ModelRegistry,
    UnsupportedBodyPart,
    get_registry,
    result_label,
)
from tests.inference.conftest import build_tiny_cnn, wrist_entry, write_manifest

REPO_MODELS = Path(__file__).resolve().parents[2] / "models"


def test_manifest_lists_configured_body_parts_and_which_are_installed(tiny_model_dir):
    registry = ModelRegistry(tiny_model_dir)

    assert registry.body_parts() == ["XR_HAND", "XR_WRIST"]
    assert registry.available("XR_WRIST")
    assert not registry.available("XR_HAND")  # configured, file not installed
    assert not registry.available("XR_ELBOW")  # not configured at all
    assert registry.missing() == ["XR_HAND"]
    spec = registry.spec("XR_WRIST")
    assert spec.name == "tiny-wrist"
    assert spec.path == tiny_model_dir / "tiny.keras"
    assert spec.labels == ("abnormal", "normal")
    assert spec.abnormal_index == 0
    assert spec.demo is True
    assert registry.spec("XR_HAND").name == "HAND"  # default name: the file's stem


def test_unconfigured_body_part_is_unsupported(tiny_model_dir):
    registry = ModelRegistry(tiny_model_dir)

    with pytest.raises(UnsupportedBodyPart):
        registry.get("XR_ELBOW")


def test_missing_weight_file_names_file_and_body_part(tiny_model_dir):
    with pytest.raises(ModelLoadError, match=r"HAND\.h5.*XR_HAND.*missing"):
        ModelRegistry(tiny_model_dir).get("XR_HAND")


@pytest.mark.parametrize("file_name", ["WRIST.h5", "WRIST.keras"])
def test_corrupt_weight_file_names_file_and_body_part(tmp_path, file_name):
    (tmp_path / file_name).write_bytes(b"these are not weights" * 100)
    write_manifest(tmp_path, {"XR_WRIST": wrist_entry(file=file_name)})

    with pytest.raises(ModelLoadError) as caught:
        ModelRegistry(tmp_path).get("XR_WRIST")
    assert file_name in str(caught.value)
    assert "XR_WRIST" in str(caught.value)


def test_loads_once_and_version_is_the_files_sha256(tiny_model_dir):
    registry = ModelRegistry(tiny_model_dir)

    loaded = registry.get("XR_WRIST")

    assert registry.get("XR_WRIST") is loaded
    assert loaded.version == hashlib.sha256((tiny_model_dir / "tiny.keras").read_bytes()).hexdigest()
    reference = build_tiny_cnn()
    batch = np.random.default_rng(0).random((2, 224, 224, 3), dtype=np.float32) / 255
    np.testing.assert_allclose(loaded.model(batch), reference(batch), atol=1e-6)


def test_sha256_in_manifest_is_verified(tiny_model_dir):
    digest = hashlib.sha256((tiny_model_dir / "tiny.keras").read_bytes()).hexdigest()
    write_manifest(tiny_model_dir, {"XR_WRIST": wrist_entry(sha256=digest.upper())})
    assert ModelRegistry(tiny_model_dir).get("XR_WRIST").version == digest

    write_manifest(tiny_model_dir, {"XR_WRIST": wrist_entry(sha256="0" * 64)})
    with pytest.raises(ModelLoadError, match=r"tiny\.keras.*XR_WRIST.*sha256"):
        ModelRegistry(tiny_model_dir).get("XR_WRIST")


def test_cache_keeps_only_the_most_recently_used_models(tiny_model_dir):
    shutil.copy(tiny_model_dir / "tiny.keras", tiny_model_dir / "hand.keras")
    write_manifest(tiny_model_dir, {"XR_WRIST": wrist_entry(), "XR_HAND": wrist_entry(file="hand.keras")})
    registry = ModelRegistry(tiny_model_dir, cache_size=1)

    wrist = registry.get("XR_WRIST")
    assert registry.get("XR_WRIST") is wrist
    registry.get("XR_HAND")

    assert registry.get("XR_WRIST") is not wrist  # evicted by XR_HAND, loaded again


def test_concurrent_first_use_loads_one_model(tiny_model_dir):
    registry = ModelRegistry(tiny_model_dir)
    results = []
    start = threading.Barrier(6)

    def load() -> None:
        start.wait()
        results.append(registry.get("XR_WRIST"))

    threads = [threading.Thread(target=load) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(results) == 6
    assert all(result is results[0] for result in results)


def test_plain_keras3_h5_file_loads(tmp_path):
    inputs = keras.Input(shape=(224, 224, 3))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(3, 3)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(features))
    model.save(tmp_path / "plain.h5")
    write_manifest(tmp_path, {"XR_ELBOW": wrist_entry(file="plain.h5")})
    batch = np.random.default_rng(1).random((2, 224, 224, 3), dtype=np.float32)

    loaded = ModelRegistry(tmp_path).get("XR_ELBOW")

    np.testing.assert_allclose(loaded.model(batch), model(batch), atol=1e-6)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (wrist_entry(labels=["positive", "negative"]), "must include 'abnormal'"),
        (wrist_entry(threshold=1.5), "outside"),
        (wrist_entry(sha256="abc"), "64 hex digits"),
        ({"preprocessing": "seed", "labels": ["abnormal", "normal"], "threshold": 0.5}, "missing key 'file'"),
    ],
)
def test_invalid_manifest_entries_are_rejected(tmp_path, entry, message):
    write_manifest(tmp_path, {"XR_WRIST": entry})

    with pytest.raises(ManifestError, match=message):
        ModelRegistry(tmp_path)


def test_unknown_body_part_and_missing_manifest_are_rejected(tmp_path):
    with pytest.raises(ManifestError, match=r"no models\.toml"):
        ModelRegistry(tmp_path)
    write_manifest(tmp_path, {"XR_KNEE": wrist_entry()})
    with pytest.raises(ManifestError, match="XR_KNEE"):
        ModelRegistry(tmp_path)


def test_get_registry_is_one_per_model_dir(tiny_model_dir):
    assert get_registry(tiny_model_dir) is get_registry(tiny_model_dir / ".." / "models")


def test_shipped_manifest_covers_the_five_seed_files():
    registry = ModelRegistry(REPO_MODELS)

    assert registry.body_parts() == ["XR_FINGER", "XR_FOREARM", "XR_HAND", "XR_HUMERUS", "XR_WRIST"]
    assert set(registry.body_parts()) <= set(BODY_PARTS)
    for body_part in registry.body_parts():
        spec = registry.spec(body_part)
        assert spec.path.name == f"{body_part.removeprefix('XR_')}.h5"
        assert (spec.preprocessing, spec.labels, spec.threshold, spec.demo) == (
            "seed",
            ("abnormal", "normal"),
            0.5,
            False,
        )


def _spec(tmp_path, **overrides):
    write_manifest(tmp_path, {"XR_WRIST": wrist_entry(**overrides)})
    return ModelRegistry(tmp_path).spec("XR_WRIST")


def test_output_semantics_default_to_softmax_over_the_labels(tmp_path):
    softmax = _spec(tmp_path, labels=["normal", "abnormal"])
    outputs = np.array([[0.9, 0.1], [0.25, 0.75]])

    assert (softmax.output, softmax.output_count) == ("softmax", 2)
    np.testing.assert_array_equal(softmax.abnormal_probabilities(outputs), [0.1, 0.75])


def test_sigmoid_output_is_p_abnormal_by_default_and_p_normal_when_labelled_so(tmp_path):
    entry = {"file": "m.keras", "preprocessing": "unit-v1", "threshold": 0.5, "output": "sigmoid"}
    write_manifest(tmp_path, {"XR_WRIST": entry, "XR_HAND": {**entry, "labels": ["normal"]}})
    registry = ModelRegistry(tmp_path)
    p_abnormal, p_normal = registry.spec("XR_WRIST"), registry.spec("XR_HAND")
    outputs = np.array([[0.2], [0.9]], dtype=np.float32)

    assert p_abnormal.labels == ("abnormal",) and p_normal.labels == ("normal",)
    np.testing.assert_allclose(p_abnormal.abnormal_probabilities(outputs), [0.2, 0.9], atol=1e-7)
    np.testing.assert_allclose(p_normal.abnormal_probabilities(outputs), [0.8, 0.1], atol=1e-7)
    # An export that drops the unit axis gives (N,): still one probability per image.
    np.testing.assert_allclose(p_normal.abnormal_probabilities(outputs[:, 0]), [0.8, 0.1], atol=1e-7)
    assert (p_abnormal.abnormal_sign, p_normal.abnormal_sign) == (1.0, -1.0)


@pytest.mark.parametrize(
    ("overrides", "outputs", "message"),
    [
        ({}, np.zeros((3, 1)), r"describes 2 softmax output\(s\).*gives 1 outputs per image"),
        (
            {"labels": ["abnormal", "normal", "other"]},
            np.zeros((3, 2)),
            "describes 3 softmax.*gives 2 outputs",
        ),
        (
            {"output": "sigmoid", "labels": ["abnormal"]},
            np.zeros((3, 2)),
            "describes 1 sigmoid.*gives 2 outputs",
        ),
        ({}, np.zeros((3, 2, 1)), r"describes 2 softmax.*gives outputs of shape \(3, 2, 1\)"),
    ],
)
def test_outputs_that_do_not_match_the_manifest_are_refused(tmp_path, overrides, outputs, message):
    spec = _spec(tmp_path, **overrides)

    with pytest.raises(ManifestError, match=r"models\.toml \[XR_WRIST\] " + message):
        spec.abnormal_probabilities(outputs)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"output": "logits"}, "output 'logits' must be one of 'softmax', 'sigmoid'"),
        ({"output": "sigmoid", "labels": ["abnormal", "normal"]}, "sigmoid output is one probability"),
        ({"output": "sigmoid", "labels": ["positive"]}, "sigmoid output is one probability"),
        ({"labels": ["abnormal"]}, 'single-unit model needs output = "sigmoid"'),
        ({"labels": ["abnormal", "abnormal"]}, "repeat a name"),
        ({"labels": "abnormal"}, "labels must be a list"),
        ({"outputs": "softmax"}, r"unknown keys \['outputs'\]"),
    ],
)
def test_invalid_output_semantics_are_rejected(tmp_path, overrides, message):
    write_manifest(tmp_path, {"XR_WRIST": wrist_entry(**overrides)})

    with pytest.raises(ManifestError, match=message):
        ModelRegistry(tmp_path)


# --- the indeterminate band (issue 10) ---------------------------------------------------------
def _band_manifest(tmp_path, band: str, *, threshold: float = 0.5) -> Path:
    """A wrist entry with ``indeterminate = <band>`` written as raw TOML (numbers stay numbers)."""
    path = write_manifest(tmp_path, {"XR_WRIST": wrist_entry(threshold=threshold)})
    line = f"threshold = {threshold!r}"
    path.write_text(path.read_text().replace(line, f"{line}\nindeterminate = {band}"))
    return path


def test_a_band_is_read_as_low_and_high(tmp_path):
    _band_manifest(tmp_path, "[0.35, 0.65]")
    spec = ModelRegistry(tmp_path).spec("XR_WRIST")
    assert spec.indeterminate == (0.35, 0.65)
    _band_manifest(tmp_path, "[0.5, 1]")  # the threshold may be an edge; integers are numbers
    assert ModelRegistry(tmp_path).spec("XR_WRIST").indeterminate == (0.5, 1.0)


def test_no_band_key_means_no_band(tmp_path):
    assert _spec(tmp_path).indeterminate is None


@pytest.mark.parametrize(
    ("band", "threshold", "message"),
    [
        ("[0.35]", 0.5, r"two numbers \[low, high\]"),
        ("[0.2, 0.5, 0.8]", 0.5, r"two numbers \[low, high\]"),
        ('["0.35", "0.65"]', 0.5, r"two numbers \[low, high\]"),
        ("0.35", 0.5, r"two numbers \[low, high\]"),
        ("[true, false]", 0.5, r"two numbers \[low, high\]"),
        ("[-0.1, 0.6]", 0.5, r"within \[0, 1\]"),
        ("[0.4, 1.2]", 0.5, r"within \[0, 1\]"),
        ("[0.65, 0.35]", 0.5, "needs low < high"),
        ("[0.5, 0.5]", 0.5, "needs low < high; leave the key out"),
        ("[0.55, 0.7]", 0.5, r"must contain the threshold 0.5 \(low <= threshold <= high\)"),
        ("[0.2, 0.4]", 0.5, "must contain the threshold 0.5"),
    ],
)
def test_invalid_bands_are_refused_with_a_clear_message(tmp_path, band, threshold, message):
    _band_manifest(tmp_path, band, threshold=threshold)

    with pytest.raises(ManifestError, match=message) as error:
        ModelRegistry(tmp_path)
    assert "[XR_WRIST]: indeterminate" in str(error.value)


def test_shipped_manifest_gives_every_seed_model_a_band_around_its_threshold():
    registry = ModelRegistry(REPO_MODELS)
    for body_part in registry.body_parts():
        spec = registry.spec(body_part)
        assert spec.indeterminate == (0.35, 0.65)
        low, high = spec.indeterminate
        assert low <= spec.threshold <= high


@pytest.mark.parametrize(
    ("probability", "band", "label"),
    [
        (0.3499999, (0.35, 0.65), "normal"),
        (0.35, (0.35, 0.65), "indeterminate"),  # the band's low end is in the band
        (0.5, (0.35, 0.65), "indeterminate"),  # at the threshold: no call
        (0.6499999, (0.35, 0.65), "indeterminate"),
        (0.65, (0.35, 0.65), "abnormal"),  # the high end is abnormal, as the threshold is without a band
        (0.0, (0.0, 0.5), "indeterminate"),
        (1.0, (0.5, 1.0), "abnormal"),
        (0.4999999, None, "normal"),
        (0.5, None, "abnormal"),
    ],
)
def test_result_label_at_the_band_edges(probability, band, label):
    assert result_label(probability, threshold=0.5, indeterminate=band) == label
