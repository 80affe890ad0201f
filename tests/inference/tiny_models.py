"""Tiny real Keras models and their models.toml, for tests of the task and the worker.

They stand in for the big InceptionResNetV2 weights: same input (224 x 224 x 3), same output
layout (softmax over ["abnormal", "normal"]), a 4-D layer for Grad-CAM, milliseconds to run.
"""

from pathlib import Path

WRIST_FILE = "tiny_wrist.keras"
BROKEN_FILE = "broken_hand.keras"


def write_tiny_model_dir(directory: Path) -> Path:
    """Write a working wrist model, a corrupt hand model file and the manifest; return the dir."""
    import keras

    directory.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(7)
    inputs = keras.Input(shape=(224, 224, 3))
    features = keras.layers.Conv2D(4, 3, strides=4, activation="relu", name="features")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    outputs = keras.layers.Dense(2, activation="softmax", name="scores")(pooled)
    keras.Model(inputs, outputs, name="tiny_wrist").save(directory / WRIST_FILE)
    # A weight file cut short in transfer: the registry must refuse it with a clear message.
    (directory / BROKEN_FILE).write_bytes(b"PK\x03\x04 truncated keras archive")
    (directory / "models.toml").write_text(
        f"""
[XR_WRIST]
file = "{WRIST_FILE}"
preprocessing = "seed"
labels = ["abnormal", "normal"]
threshold = 0.5
demo = true

[XR_HAND]
file = "{BROKEN_FILE}"
preprocessing = "seed"
labels = ["abnormal", "normal"]
threshold = 0.5
demo = true
"""
    )
    return directory
