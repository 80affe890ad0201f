"""Grad-CAM: the heat lands on what the model looks at, for flat and nested (seed-like) models."""

from __future__ import annotations

import io

import keras
import numpy as np
import pytest
from PIL import Image
from skimage.transform import resize

from inference.gradcam import feature_split, gradcam_heatmaps, heatmap_overlay_png, input_region
from tests.inference.conftest import gray_image

SIZE = 64
LESION_RADIUS = 4


def _lesion_images(count: int, *, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dark noisy images; the abnormal half (class 0) has a bright blob at a random place."""
    images = rng.normal(0.2, 0.05, size=(count, SIZE, SIZE, 1)).astype(np.float32)
    labels = np.ones(count, dtype=np.int64)
    centres = rng.integers(10, SIZE - 10, size=(count, 2))
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    for index in range(0, count, 2):
        row, col = centres[index]
        blob = np.exp(-((rows - row) ** 2 + (cols - col) ** 2) / (2 * LESION_RADIUS**2))
        images[index, :, :, 0] += 0.8 * blob
        labels[index] = 0
    return images, labels, centres


def _conv_trunk(inputs):
    features = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    features = keras.layers.MaxPooling2D(2)(features)
    return keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="last_conv")(features)


def _flat_model() -> keras.Model:
    inputs = keras.Input(shape=(SIZE, SIZE, 1))
    pooled = keras.layers.GlobalMaxPooling2D()(_conv_trunk(inputs))
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(pooled))


def _nested_model() -> keras.Model:
    # The seed's shape: a base model nested as one layer of a Sequential, then a head.
    inputs = keras.Input(shape=(SIZE, SIZE, 1))
    base = keras.Model(inputs, _conv_trunk(inputs), name="base")
    return keras.Sequential(
        [
            keras.Input(shape=(SIZE, SIZE, 1)),
            base,
            keras.layers.GlobalMaxPooling2D(),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )


def _branching_head_model() -> keras.Model:
    # The maps feed two branches: the head is not a chain, so a grad model runs the whole network.
    inputs = keras.Input(shape=(SIZE, SIZE, 1))
    features = _conv_trunk(inputs)
    pooled = keras.layers.Concatenate()(
        [
            keras.layers.GlobalMaxPooling2D()(features),
            keras.layers.GlobalMaxPooling2D(name="second_branch")(features),
        ]
    )
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(pooled))


def _trained(model: keras.Model) -> keras.Model:
    keras.utils.set_random_seed(0)
    images, labels, _ = _lesion_images(400, rng=np.random.default_rng(0))
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(images, labels, batch_size=32, epochs=6, verbose=0)
    return model


@pytest.fixture(scope="module")
def lesion_test_set():
    images, labels, centres = _lesion_images(16, rng=np.random.default_rng(1))
    abnormal = labels == 0
    return images[abnormal], centres[abnormal]


@pytest.mark.parametrize(
    ("build", "cut"),
    [(_flat_model, True), (_nested_model, True), (_branching_head_model, False)],
    ids=["functional", "nested", "branching-head"],
)
def test_heat_lies_on_the_lesion(build, cut, lesion_test_set):
    keras.utils.set_random_seed(0)
    model = _trained(build())
    assert (feature_split(model) is not None) == cut  # both ways of computing Grad-CAM are tested
    images, centres = lesion_test_set
    assert np.mean(np.argmax(model.predict_on_batch(images), axis=1) == 0) > 0.8, "model must find lesions"

    heatmaps = gradcam_heatmaps(model, images, class_index=0)

    assert heatmaps.shape == (len(images), SIZE // 2, SIZE // 2)
    assert heatmaps.min() >= 0 and heatmaps.max() <= 1
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    mass_on_lesion = []
    for heatmap, (row, col) in zip(heatmaps, centres, strict=True):
        full = resize(heatmap, (SIZE, SIZE), order=1)
        on_lesion = (rows - row) ** 2 + (cols - col) ** 2 <= (2 * LESION_RADIUS) ** 2
        mass_on_lesion.append(full[on_lesion].sum() / full.sum())
        peak = np.unravel_index(np.argmax(full), full.shape)
        assert on_lesion[peak], f"hottest point {peak} is off the lesion at {(row, col)}"
    # The lesion disc covers about 5 % of the image; most of the heat must be on it.
    assert np.mean(mass_on_lesion) > 0.5


def test_seed_heatmaps_come_from_the_nested_last_conv_block(seed_format_loaded, seed_format_file):
    split = feature_split(seed_format_loaded.model)
    assert split.features_model.outputs[0].shape[1:] == (5, 5, 1536)
    assert split.head[0].name.startswith("flatten")

    heatmaps = gradcam_heatmaps(seed_format_loaded.model, seed_format_file.inputs[:2])

    assert heatmaps.shape == (2, 5, 5)  # conv_7b_ac of InceptionResNetV2 at 224x224
    assert np.isfinite(heatmaps).all()
    assert heatmaps.min() >= 0 and heatmaps.max() <= 1


def test_overlay_is_the_radiograph_size_and_colours_only_the_hot_region():
    rng = np.random.default_rng(0)
    pixels = rng.integers(1000, 60000, size=(300, 200)).astype(np.uint16)  # 16-bit, as from a PNG16
    heatmap = np.zeros((5, 5), dtype=np.float32)
    heatmap[2, 2] = 1.0  # hot in the middle only

    png = heatmap_overlay_png(gray_image(pixels), heatmap, preprocessing="seed")

    overlay = np.asarray(Image.open(io.BytesIO(png)))
    assert overlay.shape == (300, 200, 3)
    assert (overlay[:10, :, 0] == overlay[:10, :, 2]).all(), "a cold border must show the radiograph as gray"
    centre = overlay[140:160, 90:110].astype(int)
    assert (centre[:, :, 0] != centre[:, :, 2]).any(), "the hot centre must be coloured"


def test_seed_heatmap_covers_the_centre_crop_only():
    top, left, bottom, right = input_region(preprocessing="seed")

    assert (top, left) == pytest.approx((38 / 300, 38 / 300))
    assert (bottom, right) == pytest.approx((262 / 300, 262 / 300))
    assert input_region(preprocessing="imagenet-v1") == (0.0, 0.0, 1.0, 1.0)


def test_a_target_inside_a_nested_base_gets_its_maps_from_a_grad_model(lesion_test_set):
    model = _nested_model()
    first_conv = model.layers[0].layers[1].name  # before the base's output: the model cannot be cut
    images, _ = lesion_test_set

    heatmaps = gradcam_heatmaps(model, images, layer_name=first_conv)

    assert heatmaps.shape == (len(images), SIZE, SIZE)  # the first conv keeps the full resolution
    assert heatmaps.min() >= 0 and heatmaps.max() <= 1 and np.isfinite(heatmaps).all()
    assert feature_split(model) is not None  # while the default target (the base's output) is cut
