"""Fixtures for the inference tests: tiny real Keras models, model dirs, and a seed-format file.

Reusable elsewhere: ``tiny_model_file`` (a small .keras CNN on seed-preprocessed 224x224x3 input,
output 0 = abnormal), ``tiny_model_dir`` (a model dir holding it as XR_WRIST, with XR_HAND
configured but missing), ``write_manifest`` and ``gray_image`` (a DecodedImage from an array).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from inference.decoding import DecodedImage

SEED_FORMAT_INPUTS = 4


def write_manifest(model_dir: Path, entries: dict[str, dict[str, object]]) -> Path:
    """Write ``models.toml`` in ``model_dir`` from {body part: {key: value}}."""
    lines = []
    for body_part, entry in entries.items():
        lines.append(f"[{body_part}]")
        for key, value in entry.items():
            if isinstance(value, bool):
                rendered = "true" if value else "false"
            elif isinstance(value, str):
                rendered = f'"{value}"'
            elif isinstance(value, list | tuple):
                rendered = "[" + ", ".join(f'"{item}"' for item in value) + "]"
            else:
                rendered = repr(value)
            lines.append(f"{key} = {rendered}")
        lines.append("")
    path = model_dir / "models.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def wrist_entry(**overrides: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "file": "tiny.keras",
        "preprocessing": "seed",
        "labels": ["abnormal", "normal"],
        "threshold": 0.5,
        "demo": True,
    }
    entry.update(overrides)
    return entry


def gray_image(pixels: np.ndarray) -> DecodedImage:
    """A decoded gray image (uint8 or uint16) as the decoder would hand it over."""
    height, width = pixels.shape[:2]
    return DecodedImage(
        pixels=pixels,
        format="png",
        width=width,
        height=height,
        bit_depth=16 if pixels.dtype == np.uint16 else 8,
    )


def build_tiny_cnn(*, seed: int = 0):
    """A small CNN on seed-preprocessed input whose outputs depend visibly on the image."""
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input(shape=(224, 224, 3)),
            keras.layers.Rescaling(255.0),
            keras.layers.AveragePooling2D(8),
            keras.layers.Conv2D(4, 3, activation="relu", name="tiny_conv"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2, activation="softmax"),
        ],
        name="tiny_cnn",
    )
    kernel, bias = model.layers[-1].get_weights()
    model.layers[-1].set_weights([kernel * 20.0, bias])  # spread the outputs away from 0.5
    return model


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory) -> Path:
    """A tiny .keras CNN, saved once per session."""
    path = tmp_path_factory.mktemp("tiny-model") / "tiny.keras"
    build_tiny_cnn().save(path)
    return path


@pytest.fixture
def tiny_model_dir(tmp_path, tiny_model_file) -> Path:
    """A model dir: XR_WRIST = the tiny CNN (demo), XR_HAND configured but its file missing."""
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    shutil.copy(tiny_model_file, model_dir / "tiny.keras")
    write_manifest(
        model_dir,
        {"XR_WRIST": wrist_entry(name="tiny-wrist"), "XR_HAND": wrist_entry(file="HAND.h5", demo=False)},
    )
    return model_dir


@dataclass(frozen=True)
class SeedFormatFile:
    path: Path
    inputs: np.ndarray  # (N, 224, 224, 3) float32
    reference: np.ndarray  # Keras 2 outputs for ``inputs``, computed in float32


def _keras2_seed_model(tf_keras):
    base = tf_keras.applications.InceptionResNetV2(include_top=False, weights=None, input_shape=(224, 224, 3))
    return tf_keras.Sequential(
        [
            base,
            tf_keras.layers.Flatten(),
            tf_keras.layers.Dense(256, activation="relu"),
            tf_keras.layers.Dropout(0.5),
            tf_keras.layers.Dense(2, activation="softmax"),
        ]
    )


@pytest.fixture(scope="session")
def seed_format_file(tmp_path_factory) -> SeedFormatFile:
    """A file in the seed's format, written through the Keras 2 API (``tf_keras``), once per session.

    The seed architecture is built under ``mixed_float16``, compiled with RMSprop and saved as
    legacy HDF5, like the original files. The reference outputs come from a float32 Keras 2 clone
    holding the same weights: under ``mixed_float16`` Keras 2 computes in float16 (errors ~1e-3),
    while the registry computes in float32, so float32 is the like-for-like reference.
    """
    import tf_keras

    rng = np.random.default_rng(7)
    # Inputs span [0, 1] rather than the seed's [0, 1/255] so that the randomly initialised network's
    # outputs differ visibly from image to image; loading fidelity does not depend on the range.
    inputs = rng.random((SEED_FORMAT_INPUTS, 224, 224, 3), dtype=np.float32)
    try:
        tf_keras.mixed_precision.set_global_policy("float32")
        tf_keras.utils.set_random_seed(7)
        reference_model = _keras2_seed_model(tf_keras)
        head = reference_model.layers[-1]
        features = tf_keras.Model(reference_model.inputs, reference_model.layers[-2].output)(inputs).numpy()
        kernel, bias = head.get_weights()
        margins = features @ (kernel[:, 0] - kernel[:, 1])
        # Scale and centre the last layer so the probabilities spread over (0, 1): an equality test
        # on outputs that all sit at 0.5 ± 1e-6 could not tell a right load from a wrong one.
        scale = 2.0 / max(float(np.std(margins)), 1e-12)
        centre = float(np.mean(margins)) * scale / 2
        head.set_weights([kernel * scale, np.array([-centre, centre], dtype=bias.dtype)])
        reference = reference_model(inputs, training=False).numpy()

        tf_keras.mixed_precision.set_global_policy("mixed_float16")
        seed_model = _keras2_seed_model(tf_keras)
        seed_model.set_weights(reference_model.get_weights())
        seed_model.compile(optimizer=tf_keras.optimizers.RMSprop(1e-4), loss="categorical_crossentropy")
        path = tmp_path_factory.mktemp("seed-format") / "WRIST.h5"
        seed_model.save(path, save_format="h5")
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")
    return SeedFormatFile(path=path, inputs=inputs, reference=reference)


@pytest.fixture(scope="session")
def seed_format_loaded(seed_format_file, tmp_path_factory):
    """The seed-format file loaded through the registry (the InceptionResNetV2 built once more)."""
    from inference.registry import ModelRegistry

    model_dir = seed_format_file.path.parent
    write_manifest(model_dir, {"XR_WRIST": wrist_entry(file="WRIST.h5", demo=False)})
    return ModelRegistry(model_dir).get("XR_WRIST")
