"""Fixtures for the inference tests: tiny real Keras models, model dirs, and a seed-format file.

Reusable elsewhere: ``tiny_model_file`` (a small .keras CNN on seed-preprocessed 224x224x3 input,
output 0 = abnormal), ``tiny_model_dir`` (a model dir holding it as XR_WRIST, with XR_HAND
configured but missing), ``write_manifest`` and ``gray_image`` (a DecodedImage from an array).
Keras 2 files: ``seed_format_file`` (the original notebook's model as it saved it, written through
tf_keras), ``notebook_files`` (both cell orders), ``genuine_files`` (TF 2.10.1's own, slow).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from inference.decoding import DecodedImage
from tests.inference.keras2_files import (
    NOTEBOOK_FLOAT32_LAYERS,
    GenuineFiles,
    Keras2File,
    ensure_genuine_files,
    fast_inputs,
    python310,
    write_notebook_files,
)

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


# --- Keras 2 legacy HDF5 files (tests/inference/keras2_files.py) ----------------------------------


@pytest.fixture(scope="session")
def notebook_files(tmp_path_factory) -> dict[str, Keras2File]:
    """The original notebook's model in both cell orders, written through tf_keras once per session.

    ``notebook-float32-layers``: built and compiled under float32, then ``mixed_float16`` set and the
    file written by ModelCheckpoint (the notebook's own order: float32 layers, plain RMSprop).
    ``notebook-mixed-layers``: built under ``mixed_float16`` (mixed layers, LossScaleOptimizer).
    Both hold TF 2.10's Lambda layers and optimizer state; inputs span [0, 1] rather than the
    seed's [0, 1/255] (loading fidelity does not depend on the range), reference outputs are
    Keras 2's in float32.
    """
    inputs = fast_inputs(NOTEBOOK_FLOAT32_LAYERS, count=SEED_FORMAT_INPUTS)
    return write_notebook_files(folder=tmp_path_factory.mktemp("notebook"), inputs=inputs)


@pytest.fixture(scope="session")
def seed_format_file(notebook_files) -> Keras2File:
    """The notebook's model as the notebook saved it (float32 layers, ModelCheckpoint), as WRIST.h5."""
    return notebook_files[NOTEBOOK_FLOAT32_LAYERS.name]


@pytest.fixture(scope="session")
def seed_format_loaded(seed_format_file, tmp_path_factory):
    """The seed-format file loaded through the registry (the InceptionResNetV2 built once more)."""
    from inference.registry import ModelRegistry

    model_dir = tmp_path_factory.mktemp("seed-format")
    (model_dir / "WRIST.h5").symlink_to(seed_format_file.path)
    write_manifest(model_dir, {"XR_WRIST": wrist_entry(file="WRIST.h5", demo=False)})
    return ModelRegistry(model_dir).get("XR_WRIST")


@pytest.fixture(scope="session")
def genuine_files(shared_data) -> GenuineFiles:
    """Files written by TensorFlow 2.10.1 under Python 3.10, with TF 2.10's outputs on real radiographs.

    Cached under ~/.cache/mskdetect/tf210 (first build: the venv ~6 minutes, the files ~4 minutes).
    """
    if os.environ.get("MSKDETECT_SLOW_TESTS") != "1":
        pytest.skip("set MSKDETECT_SLOW_TESTS=1 to build a TensorFlow 2.10 venv (downloads ~600 MB)")
    python = python310()
    if python is None:
        pytest.skip("python3.10 is not available (TensorFlow 2.10 has no wheels for newer Pythons)")
    return ensure_genuine_files(python=python, shared_data=shared_data)
