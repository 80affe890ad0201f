"""The seed classifier's architecture, and a plain description of any loaded model.

The seed's files are loaded like any other Keras 2 file (``inference.keras2_legacy``); this module
builds the same architecture for training and benchmarks, exactly as the original notebook
(``train_model.ipynb``, TF 2.10) did: a functional ``keras.Model`` with the InceptionResNetV2 base
nested inside, then Flatten, Dense(256), a separate relu Activation, Dropout(0.5), Dense(2) and a
separate softmax Activation. Output 0 is P(abnormal).
"""

from __future__ import annotations

import keras

SEED_BASE_NAME = "inception_resnet_v2"
SEED_LAST_CONV_LAYER = "conv_7b_ac"
SEED_INPUT_SHAPE = (224, 224, 3)


def build_seed_model(
    *,
    weights: str | None = None,
    input_shape: tuple[int, int, int] = SEED_INPUT_SHAPE,
    hidden_units: int = 256,
    dropout: float = 0.5,
    num_classes: int = 2,
) -> keras.Model:
    """Build the seed classifier the way the notebook did, under the dtype policy in force."""
    inception = keras.applications.InceptionResNetV2(
        include_top=False, weights=weights, input_shape=input_shape
    )
    input_image = keras.layers.Input(input_shape)
    x = inception(input_image)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(hidden_units)(x)
    x = keras.layers.Activation(activation="relu")(x)
    x = keras.layers.Dropout(dropout)(x)
    x = keras.layers.Dense(num_classes)(x)
    out = keras.layers.Activation(activation="softmax")(x)
    return keras.Model(inputs=input_image, outputs=out, name="seed_classifier")
