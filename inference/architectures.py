"""Model architectures known to the registry, and how to recognise them in a saved HDF5 file.

The seed's weight files are Keras 2 / TF 2.10 full-model HDF5 files, saved under the
``mixed_float16`` policy, whose InceptionResNetV2 holds ``Lambda`` layers serialised as Python 3.10
bytecode. Neither Keras 3's ``load_model`` nor ``tf_keras.models.load_model`` can deserialise them,
so the registry rebuilds the architecture here (float32) and loads only the weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import keras

SEED_BASE_NAME = "inception_resnet_v2"
SEED_LAST_CONV_LAYER = "conv_7b_ac"
SEED_INPUT_SHAPE = (224, 224, 3)
_NESTED_MODEL_CLASSES = {"Functional", "Model"}
_SKIPPED_CLASSES = {"InputLayer"}


@dataclass(frozen=True)
class SeedArchitecture:
    """The parameters of a seed-style model read from a saved file."""

    input_shape: tuple[int, int, int] = SEED_INPUT_SHAPE
    hidden_units: int = 256
    dropout: float = 0.5
    num_classes: int = 2


def build_seed_model(
    *,
    weights: str | None = None,
    input_shape: tuple[int, int, int] = SEED_INPUT_SHAPE,
    hidden_units: int = 256,
    dropout: float = 0.5,
    num_classes: int = 2,
) -> keras.Model:
    """Build the seed classifier: a nested InceptionResNetV2 base, then Flatten → Dense → Dropout → Dense.

    Output 0 is P(abnormal) for the seed's files. The model is built under the dtype policy in
    force when called; the registry calls it under ``float32``.
    """
    base = keras.applications.InceptionResNetV2(include_top=False, weights=weights, input_shape=input_shape)
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            base,
            keras.layers.Flatten(),
            keras.layers.Dense(hidden_units, activation="relu"),
            keras.layers.Dropout(dropout),
            keras.layers.Dense(num_classes, activation="softmax"),
        ],
        name="seed_classifier",
    )


def build_seed_from_architecture(architecture: SeedArchitecture) -> keras.Model:
    """Build the seed classifier with the parameters recognised in a file."""
    return build_seed_model(
        input_shape=architecture.input_shape,
        hidden_units=architecture.hidden_units,
        dropout=architecture.dropout,
        num_classes=architecture.num_classes,
    )


def recognise_seed_architecture(
    *, model_config: str | bytes | dict[str, Any] | None, weight_layer_names: list[str]
) -> SeedArchitecture | None:
    """Return the seed architecture's parameters when a saved model config describes it, else None.

    ``model_config`` is the ``model_config`` attribute of a Keras HDF5 file (JSON);
    ``weight_layer_names`` is the ``layer_names`` attribute of its ``model_weights`` group, which
    must hold the nested base and the two dense layers in that order.
    """
    config = _parse_config(model_config)
    if config is None or config.get("class_name") not in {"Sequential", *_NESTED_MODEL_CLASSES}:
        return None
    layers = [
        layer
        for layer in config.get("config", {}).get("layers", [])
        if layer.get("class_name") not in _SKIPPED_CLASSES
    ]
    if [layer.get("class_name") for layer in layers[1:]] != ["Flatten", "Dense", "Dropout", "Dense"]:
        return None
    base, _flatten, hidden, dropout, output = layers
    if not _is_inception_resnet_v2(base):
        return None
    if hidden["config"].get("activation") != "relu" or output["config"].get("activation") != "softmax":
        return None
    names_with_weights = [name for name in weight_layer_names if name not in {""}]
    expected = [_layer_name(base), _layer_name(hidden), _layer_name(output)]
    if [name for name in names_with_weights if name in expected] != expected:
        return None
    input_shape = _base_input_shape(base)
    if input_shape is None:
        return None
    return SeedArchitecture(
        input_shape=input_shape,
        hidden_units=int(hidden["config"]["units"]),
        dropout=float(dropout["config"].get("rate", 0.5)),
        num_classes=int(output["config"]["units"]),
    )


def _parse_config(model_config: str | bytes | dict[str, Any] | None) -> dict[str, Any] | None:
    if model_config is None:
        return None
    if isinstance(model_config, dict):
        return model_config
    if isinstance(model_config, bytes):
        model_config = model_config.decode("utf-8")
    try:
        parsed = json.loads(model_config)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _layer_name(layer: dict[str, Any]) -> str:
    # Keras 2 stores the name both at the top level and in "config"; Keras 3 only in "config".
    return str(layer.get("config", {}).get("name") or layer.get("name", ""))


def _is_inception_resnet_v2(layer: dict[str, Any]) -> bool:
    if layer.get("class_name") not in _NESTED_MODEL_CLASSES:
        return False
    inner_names = {_layer_name(inner) for inner in layer.get("config", {}).get("layers", [])}
    # The name alone could be anything a user typed; the last conv block is the architecture.
    return _layer_name(layer) == SEED_BASE_NAME and SEED_LAST_CONV_LAYER in inner_names


def _base_input_shape(base: dict[str, Any]) -> tuple[int, int, int] | None:
    for inner in base.get("config", {}).get("layers", []):
        if inner.get("class_name") == "InputLayer":
            config = inner.get("config", {})
            shape = config.get("batch_input_shape") or config.get("batch_shape")
            if shape and len(shape) == 4 and all(isinstance(dim, int) for dim in shape[1:]):
                return (int(shape[1]), int(shape[2]), int(shape[3]))
    return None
