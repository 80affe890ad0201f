"""Keras 2 legacy HDF5 files rebuilt in Keras 3: the translation, and the weight check that proves it.

Files are written through the Keras 2 API (``tf_keras``), as TF 2.x wrote them. Reference outputs
come from the same Keras 2 model computing in float32.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from inference.gradcam import feature_split, gradcam_heatmaps
from inference.keras2_legacy import LegacyModelError, load_legacy_hdf5
from inference.model_files import float32_policy, open_model
from inference.registry import ModelLoadError, ModelRegistry
from tests.inference.conftest import wrist_entry, write_manifest

# Small float32 models on the same inputs: the sums are short, the spread under oneDNN ~1e-7.
TOLERANCE = 1e-5


@pytest.fixture
def tf_keras():
    import tf_keras

    yield tf_keras
    tf_keras.mixed_precision.set_global_policy("float32")


def _inputs(shape=(32, 32, 3), count=4) -> np.ndarray:
    # A different brightness per image, so that pooled features (and outputs) differ visibly.
    rng = np.random.default_rng(5)
    scales = np.linspace(0.2, 3.0, count, dtype=np.float32).reshape(count, *([1] * len(shape)))
    return rng.random((count, *shape), dtype=np.float32) * scales


def _save(model, path: Path) -> Path:
    model.compile(optimizer="rmsprop", loss="categorical_crossentropy")
    model.save(path, save_format="h5")
    return path


def _load(path: Path):
    with float32_policy():
        return load_legacy_hdf5(path)


def _assert_same_outputs(keras2_model, path: Path, inputs: np.ndarray) -> None:
    reference = keras2_model(inputs, training=False).numpy()
    loaded = _load(path)
    outputs = np.asarray(loaded.model(inputs, training=False))
    assert outputs.dtype == np.float32
    assert np.std(reference) > 1e-3, "outputs must differ between inputs to prove anything"
    np.testing.assert_allclose(outputs, reference, atol=TOLERANCE, rtol=0)


def test_mixed_float16_sequential_loads_in_float32(tf_keras, tmp_path):
    def build():
        return tf_keras.Sequential(
            [
                tf_keras.Input(shape=(32, 32, 3)),
                tf_keras.layers.Conv2D(4, 3),
                tf_keras.layers.BatchNormalization(),
                tf_keras.layers.Activation("relu"),
                tf_keras.layers.GlobalAveragePooling2D(),
                tf_keras.layers.Dense(2, activation="softmax", dtype="float32"),
            ]
        )

    tf_keras.utils.set_random_seed(1)
    tf_keras.mixed_precision.set_global_policy("mixed_float16")
    model = build()
    path = _save(model, tmp_path / "mixed.h5")
    # Keras 2 under mixed_float16 computes in float16; the like-for-like reference is float32.
    tf_keras.mixed_precision.set_global_policy("float32")
    reference_model = build()
    reference_model.set_weights(model.get_weights())

    with h5py.File(path) as handle:
        assert "mixed_float16" in handle.attrs["model_config"], "the file must carry the mixed policy"
    _assert_same_outputs(reference_model, path, _inputs())
    assert _load(path).weights.file_weights == len(model.weights)


def test_nested_functional_base_and_separate_activations(tf_keras, tmp_path):
    # The notebook's shape in miniature: a base model built on its own Input, called on another.
    tf_keras.utils.set_random_seed(2)
    base_input = tf_keras.Input((32, 32, 3))
    features = tf_keras.layers.Conv2D(3, 3, name="last_conv")(base_input)
    base = tf_keras.Model(base_input, features, name="base")
    image = tf_keras.Input((32, 32, 3))
    x = tf_keras.layers.Flatten()(base(image))
    x = tf_keras.layers.Dense(8)(x)
    x = tf_keras.layers.Activation("relu")(x)
    x = tf_keras.layers.Dropout(0.5)(x)
    x = tf_keras.layers.Dense(2)(x)
    model = tf_keras.Model(image, tf_keras.layers.Activation("softmax")(x))
    path = _save(model, tmp_path / "nested.h5")

    _assert_same_outputs(model, path, _inputs())
    loaded = _load(path).model
    assert loaded.get_layer("base").get_layer("last_conv") is not None
    # Grad-CAM cuts it after the nested base, and scores the softmax Activation's input (the logits).
    split = feature_split(loaded)
    assert split is not None
    assert isinstance(split.last_layer, keras.layers.Activation)
    feature_maps, outputs = split.features_model(_inputs(), training=False)
    assert tuple(feature_maps.shape) == (4, 30, 30, 3)
    np.testing.assert_allclose(np.asarray(outputs), np.asarray(loaded(_inputs())), atol=1e-6, rtol=0)


def test_sequential_around_a_functional_base(tf_keras, tmp_path):
    tf_keras.utils.set_random_seed(3)
    base_input = tf_keras.Input((32, 32, 3))
    # Xception and MobileNet hold separable and depthwise convolutions (Keras 2 adds Conv's keys).
    separable = tf_keras.layers.SeparableConv2D(4, 3)(tf_keras.layers.DepthwiseConv2D(3)(base_input))
    base = tf_keras.Model(base_input, separable, name="base")
    model = tf_keras.Sequential(
        [base, tf_keras.layers.GlobalAveragePooling2D(), tf_keras.layers.Dense(1, "sigmoid")]
    )
    path = _save(model, tmp_path / "sequential.h5")

    _assert_same_outputs(model, path, _inputs())


def test_slashed_layer_names_and_normalization_state(tf_keras, tmp_path):
    # DenseNet names layers "conv1/conv"; EfficientNet holds an adapted Normalization layer.
    tf_keras.utils.set_random_seed(4)
    image = tf_keras.Input((32, 32, 3))
    normalization = tf_keras.layers.Normalization()
    normalization.adapt(_inputs(count=8) * 3.0 + 1.0)
    x = normalization(image)
    x = tf_keras.layers.Conv2D(4, 3, name="conv1/conv")(x)
    x = tf_keras.layers.BatchNormalization(name="conv1/bn")(x)
    x = tf_keras.layers.GlobalAveragePooling2D()(x)
    model = tf_keras.Model(image, tf_keras.layers.Dense(2, activation="softmax")(x))
    path = _save(model, tmp_path / "slashed.h5")

    _assert_same_outputs(model, path, _inputs())
    assert _load(path).model.get_layer("conv1_conv") is not None


def test_an_unknown_lambda_is_refused_by_name(tf_keras, tmp_path):
    image = tf_keras.Input((8,))
    doubled = tf_keras.layers.Lambda(lambda x: x * 2.0, name="my_doubling")(image)
    path = _save(tf_keras.Model(image, tf_keras.layers.Dense(2)(doubled)), tmp_path / "lambda.h5")

    with pytest.raises(LegacyModelError, match=r"'my_doubling' is a Lambda.*Rebuild the model in Keras 3"):
        _load(path)


def test_a_lambda_named_like_inception_but_doing_something_else_is_refused(tf_keras, tmp_path):
    # The name and argument alone are not enough: the code must come from inception_resnet_v2.py.
    first, second = tf_keras.Input((8,)), tf_keras.Input((8,))
    mixed = tf_keras.layers.Lambda(
        lambda inputs, scale: inputs[0] * inputs[1] - scale, arguments={"scale": 0.17}, name="block35_1"
    )([first, second])
    path = _save(tf_keras.Model([first, second], mixed), tmp_path / "impostor.h5")

    with pytest.raises(LegacyModelError, match="'block35_1' is a Lambda"):
        _load(path)


def _two_layer_file(tf_keras, path: Path) -> Path:
    tf_keras.utils.set_random_seed(5)
    model = tf_keras.Sequential(
        [tf_keras.Input((8,)), tf_keras.layers.Dense(4, name="hidden"), tf_keras.layers.Dense(2, name="out")]
    )
    return _save(model, path)


def test_a_weight_of_the_wrong_shape_is_named(tf_keras, tmp_path):
    path = _two_layer_file(tf_keras, tmp_path / "shape.h5")
    with h5py.File(path, "r+") as handle:
        group = handle["model_weights/hidden/hidden"]
        del group["kernel:0"]
        group["kernel:0"] = np.zeros((8, 5), dtype=np.float32)

    with pytest.raises(LegacyModelError, match=r"hidden/kernel:0 has shape \(8, 5\).*expects \(8, 4\)"):
        _load(path)


def test_a_weight_missing_from_the_file_is_refused(tf_keras, tmp_path):
    path = _two_layer_file(tf_keras, tmp_path / "missing.h5")
    with h5py.File(path, "r+") as handle:
        group = handle["model_weights/out"]
        names = [name.decode() if isinstance(name, bytes) else name for name in group.attrs["weight_names"]]
        group.attrs["weight_names"] = [name.encode() for name in names if "bias" not in name]

    with pytest.raises(LegacyModelError, match=r"'out' has 1 weights in the file"):
        _load(path)


def test_a_weights_only_file_says_to_save_the_full_model(tf_keras, tmp_path):
    tf_keras.utils.set_random_seed(6)
    model = tf_keras.Sequential([tf_keras.Input((8,)), tf_keras.layers.Dense(2)])
    model.save_weights(tmp_path / "weights.h5")

    with pytest.raises(LegacyModelError, match="weights only"):
        _load(tmp_path / "weights.h5")


def test_registry_errors_name_file_body_part_and_layer(tf_keras, tmp_path):
    image = tf_keras.Input((8,))
    hidden = tf_keras.layers.Lambda(lambda x: x + 1.0, name="plus_one")(image)
    _save(tf_keras.Model(image, tf_keras.layers.Dense(2)(hidden)), tmp_path / "OTHER.h5")
    write_manifest(tmp_path, {"XR_SHOULDER": wrist_entry(file="OTHER.h5")})

    with pytest.raises(ModelLoadError, match=r"OTHER\.h5 for XR_SHOULDER .*'plus_one' is a Lambda"):
        ModelRegistry(tmp_path).get("XR_SHOULDER")


def test_a_tf_savedmodel_folder_runs_its_serving_signature(tf_keras, tmp_path):
    tf_keras.utils.set_random_seed(7)
    model = tf_keras.Sequential(
        [tf_keras.Input((32, 32, 3)), tf_keras.layers.Conv2D(2, 3), tf_keras.layers.GlobalAveragePooling2D()]
    )
    model.add(tf_keras.layers.Dense(2, activation="softmax"))
    model.save(tmp_path / "saved", save_format="tf")
    inputs = _inputs()

    opened = open_model(tmp_path / "saved")

    assert opened.format == "TF SavedModel"
    np.testing.assert_allclose(
        np.asarray(opened.model(inputs)), model(inputs).numpy(), atol=TOLERANCE, rtol=0
    )
    write_manifest(tmp_path, {"XR_WRIST": wrist_entry(file="saved")})
    registry = ModelRegistry(tmp_path)
    assert registry.available("XR_WRIST")
    assert len(registry.get("XR_WRIST").version) == 64


def test_heat_maps_come_from_inside_a_base_that_pools_itself(tf_keras, tmp_path):
    # keras.applications bases built with pooling="avg" (Xception, DenseNet...) end in a 2-D output:
    # the Grad-CAM target is the base's last 4-D layer, inside it.
    tf_keras.utils.set_random_seed(8)
    base_input = tf_keras.Input((32, 32, 3))
    maps = tf_keras.layers.Conv2D(6, 3, activation="relu", name="last_conv")(base_input)
    base = tf_keras.Model(base_input, tf_keras.layers.GlobalAveragePooling2D()(maps), name="pooled_base")
    image = tf_keras.Input((32, 32, 3))
    model = tf_keras.Model(image, tf_keras.layers.Dense(2, activation="softmax")(base(image)))
    path = _save(model, tmp_path / "pooled.h5")

    heatmaps = gradcam_heatmaps(_load(path).model, _inputs())

    assert heatmaps.shape == (4, 30, 30)
    assert np.isfinite(heatmaps).all()
    assert heatmaps.max() == pytest.approx(1.0)
