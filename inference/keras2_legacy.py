"""Keras 2 legacy HDF5 files (TF 2.x ``model.save("x.h5")``, ``ModelCheckpoint``) rebuilt in Keras 3.

Keras 3's own loader refuses what TF 2.x files really hold: ``mixed_float16`` dtype-policy dicts
(``'str' object has no attribute 'quantization_mode'``) and ``Lambda`` layers stored as Python
bytecode of the interpreter that saved them (unreadable by another Python, and unsafe to run). So
the file's ``model_config`` is translated here into a config Keras 3 deserialises:

- every floating dtype or policy (``float32``, ``mixed_float16``, ``mixed_bfloat16`` ...) becomes
  ``float32``: inference runs in float32, exact and fast on CPUs (the weights are float32 in the
  file under a mixed policy too);
- each ``Lambda`` that keras.applications models hold is replaced by an equivalent layer (see
  ``_identify_lambda``); any other ``Lambda`` is refused with its name and how to convert;
- Keras 2 spellings that Keras 3 rejects are rewritten (``BatchNormalization(axis=[3])``,
  ``CustomScaleLayer``).

Functional, Sequential and nested models come through Keras 3's legacy deserialisation, which
reads Keras 2's inbound-node lists. The weights are then assigned here, not by Keras, so that the
load proves itself: each file weight goes to the variable of the layer of the same name (in the
file's order within that layer), every shape must match, and every file weight and every model
weight must be used exactly once.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np

_FLOAT_DTYPES = {"float16", "bfloat16", "float32", "float64", "mixed_float16", "mixed_bfloat16", "half"}
_MODEL_CLASSES = {"Functional", "Model", "Sequential"}
_DEPTHWISE_CLASSES = {"DepthwiseConv2D", "SeparableConv2D", "DepthwiseConv1D", "SeparableConv1D"}
# Keras 2 variable names that some Keras 3 layers spell differently (DepthwiseConv2D's kernel).
_VARIABLE_ALIASES = {"depthwise_kernel": "kernel"}
# InceptionResNetV2 names its residual-scaling layers block35_N, block17_N and block8_N.
_INCEPTION_RESNET_BLOCK = re.compile(r"^block(35|17|8)_\d+$")
_CONVERT_HINT = (
    "Rebuild the model in Keras 3 with a named layer in place of the Lambda, load the weights into "
    "it (model.load_weights on the .h5 file), and save it as .keras; see models/README.md."
)


class LegacyModelError(ValueError):
    """A Keras 2 file that cannot be rebuilt faithfully; the message names the layer or weight."""


@keras.saving.register_keras_serializable(package="mskdetect")
class ResidualScale(keras.layers.Layer):
    """``inputs[0] + inputs[1] * scale``: InceptionResNetV2's residual scaling.

    TF <= 2.10 wrote it as a ``Lambda``; keras.applications later named it ``CustomScaleLayer``.
    Same arithmetic, no bytecode.
    """

    def __init__(self, scale: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale = float(scale)

    def call(self, inputs):
        shortcut, residual = inputs
        return shortcut + residual * self.scale

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "scale": self.scale}


@dataclass(frozen=True)
class WeightReport:
    """What the weight assignment proved: counts of file weights used and values loaded."""

    file_weights: int
    model_weights: int
    values: int
    layers: int


@dataclass(frozen=True)
class LegacyModel:
    model: keras.Model
    weights: WeightReport
    keras_version: str  # of the Keras that wrote the file
    replaced_lambdas: int


def is_keras2_hdf5(path: Path) -> bool:
    """True when ``path`` is an HDF5 file holding a Keras model config (full-model save)."""
    try:
        with h5py.File(path, "r") as handle:
            return "model_config" in handle.attrs
    except OSError:
        return False


def load_legacy_hdf5(path: Path) -> LegacyModel:
    """Rebuild the model a Keras 2 full-model HDF5 file describes, in float32, with its weights.

    Raises ``LegacyModelError`` for a config that cannot be translated or weights that do not fit,
    and ``OSError`` for a file h5py cannot read. Call under a float32 global dtype policy.
    """
    with h5py.File(path, "r") as handle:
        raw_config = handle.attrs.get("model_config")
        if raw_config is None:
            raise LegacyModelError(
                "the file holds weights only (no model_config): save the full model (model.save) "
                "so that its architecture travels with it"
            )
        config = _parse_json(raw_config)
        keras_version = _as_str(handle.attrs.get("keras_version", "unknown"))
        translation = translate_config(config)
        model = _deserialize(translation.config)
        weights = assign_weights(
            model=model,
            group=handle.get("model_weights", handle),
            original_names=translation.original_names,
        )
    return LegacyModel(
        model=model,
        weights=weights,
        keras_version=keras_version,
        replaced_lambdas=translation.replaced_lambdas,
    )


@dataclass(frozen=True)
class Translation:
    config: dict[str, Any]
    replaced_lambdas: int
    original_names: dict[str, str]  # Keras 3 layer name -> the file's, where they differ


def translate_config(config: dict[str, Any]) -> Translation:
    """A Keras 3-loadable copy of a Keras 2 ``model_config`` (see the module docstring)."""
    translated = copy.deepcopy(config)
    replaced = 0
    for layer in _layer_configs(translated):
        _float32(layer)
        if layer.get("class_name") in _MODEL_CLASSES:
            _renumber_nested_model_nodes(layer)
            _unwrap_single_endpoints(layer)
        if layer.get("class_name") == "Lambda":
            _replace_lambda(layer)
            replaced += 1
        elif layer.get("class_name") == "CustomScaleLayer":
            _as_residual_scale(layer, scale=layer["config"]["scale"])
        elif layer.get("class_name") == "BatchNormalization":
            axis = layer["config"].get("axis")
            if isinstance(axis, list) and len(axis) == 1:
                layer["config"]["axis"] = int(axis[0])
        elif layer.get("class_name") in _DEPTHWISE_CLASSES:
            _drop_depthwise_groups(layer)
    renamed = _rename_slashed_layers(translated)
    return Translation(config=translated, replaced_lambdas=replaced, original_names=renamed)


def _rename_slashed_layers(config: dict[str, Any]) -> dict[str, str]:
    """Rename layers whose names hold "/" (DenseNet's ``conv1/conv``): Keras 3 forbids the character.

    The new name replaces "/" by "_", as Keras 3's own DenseNet names them; every reference is
    rewritten. Returns new name -> original name, which the weight assignment needs.
    """
    names = {_layer_name(layer) for layer in _layer_configs(config)}
    mapping: dict[str, str] = {}
    for name in sorted(name for name in names if "/" in name):
        candidate = name.replace("/", "_")
        while candidate in names or candidate in mapping.values():
            candidate += "_"
        mapping[name] = candidate
    if not mapping:
        return {}
    for layer in _layer_configs(config):
        name = _layer_name(layer)
        if name in mapping:
            layer["name"] = mapping[name]
            if isinstance(layer.get("config"), dict):
                layer["config"]["name"] = mapping[name]
        for node in layer.get("inbound_nodes") or []:
            _rename_references(node, mapping)
        inner = layer.get("config")
        if layer.get("class_name") in _MODEL_CLASSES and isinstance(inner, dict):
            for key in ("input_layers", "output_layers"):
                _rename_references(inner.get(key), mapping)
    return {new: old for old, new in mapping.items()}


def _rename_references(value: Any, mapping: dict[str, str]) -> None:
    # References are [name, node_index, tensor_index(, kwargs)] lists, possibly nested in lists.
    if not isinstance(value, list):
        return
    if value and isinstance(value[0], str) and len(value) in (3, 4) and isinstance(value[1], int):
        value[0] = mapping.get(value[0], value[0])
        return
    for item in value:
        _rename_references(item, mapping)


def _layer_configs(config: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every layer config in a model config, nested models included (depth first)."""
    yield config
    inner = config.get("config")
    if config.get("class_name") in _MODEL_CLASSES and isinstance(inner, dict):
        layers = inner.get("layers", [])
        for layer in layers:
            yield from _layer_configs(layer)


def _drop_depthwise_groups(layer: dict[str, Any]) -> None:
    # Keras 2 inherited ``groups`` (and, on separable layers, the unused ``kernel_*`` settings) from
    # Conv; Keras 3's depthwise and separable layers take none of them.
    if layer["class_name"].startswith("Separable"):
        for key in ("kernel_initializer", "kernel_regularizer", "kernel_constraint"):
            layer["config"].pop(key, None)
    groups = layer["config"].pop("groups", 1)
    if groups != 1:
        raise LegacyModelError(
            f"layer {_layer_name(layer)!r} has groups={groups}, which Keras 3 cannot express"
        )


def _unwrap_single_endpoints(model_config: dict[str, Any]) -> None:
    # Keras 2 writes one input or output as a one-item list and unpacks it when loading; Keras 3
    # would build a model that returns a one-item list, which the next layer takes as two inputs.
    inner = model_config.get("config", {})
    for key in ("input_layers", "output_layers"):
        endpoints = inner.get(key)
        if isinstance(endpoints, list) and len(endpoints) == 1 and isinstance(endpoints[0], list):
            inner[key] = endpoints[0]


def _renumber_nested_model_nodes(model_config: dict[str, Any]) -> None:
    """Shift calls of nested models down by one node: Keras 3 models have no built-in node.

    In Keras 2 a model built on its own Input owns node 0, so the first call of a nested base is
    node 1 (``[["inception_resnet_v2", 1, 0, {}]]``); Keras 3 numbers that call 0. Whether a nested
    model had the built-in node is read from the data: its highest referenced node index equals
    its number of recorded calls.
    """
    layers = model_config.get("config", {}).get("layers", [])
    calls = {
        _layer_name(layer): len(layer.get("inbound_nodes") or [])
        for layer in layers
        if layer.get("class_name") in _MODEL_CLASSES
    }
    references = [
        reference
        for layer in layers
        for node in layer.get("inbound_nodes") or []
        if isinstance(node, list)
        for reference in node
        if isinstance(reference, list) and reference and reference[0] in calls
    ]
    highest: dict[str, int] = defaultdict(lambda: -1)
    for reference in references:
        highest[reference[0]] = max(highest[reference[0]], int(reference[1]))
    for reference in references:
        if highest[reference[0]] >= calls[reference[0]]:
            reference[1] = int(reference[1]) - 1


def _float32(layer: dict[str, Any]) -> None:
    config = layer.get("config")
    if not isinstance(config, dict) or "dtype" not in config:
        return
    dtype = config["dtype"]
    if isinstance(dtype, dict):  # a Policy: {"class_name": "Policy", "config": {"name": "mixed_float16"}}
        dtype = dtype.get("config", {}).get("name", "float32")
    if dtype is None or str(dtype) in _FLOAT_DTYPES:
        config["dtype"] = "float32"


def _replace_lambda(layer: dict[str, Any]) -> None:
    scale = _identify_lambda(layer)
    if scale is None:
        name = _layer_name(layer)
        module = layer["config"].get("module") or "unknown module"
        raise LegacyModelError(
            f"layer {name!r} is a Lambda (Python code from {module}) that this loader does not know, "
            f"and running stored bytecode is unsafe. {_CONVERT_HINT}"
        )
    _as_residual_scale(layer, scale=scale)


def _identify_lambda(layer: dict[str, Any]) -> float | None:
    """The scale of InceptionResNetV2's residual-scaling Lambda, or None for any other Lambda.

    Identified by everything keras.applications writes for it, never by running it: the module
    (``keras.applications.inception_resnet_v2``, ``tensorflow.python.keras.…`` or
    ``keras_applications.…``), a ``block35_N`` / ``block17_N`` / ``block8_N`` name, the single
    argument ``scale``, two inputs (shortcut, residual), and a code object compiled from
    ``inception_resnet_v2.py`` whose variables are ``inputs`` and ``scale`` (the bytecode's
    strings are read, not executed: ``lambda inputs, scale: inputs[0] + inputs[1] * scale``).
    """
    config = layer.get("config", {})
    arguments = config.get("arguments") or {}
    module = str(config.get("module") or "")
    if not module.endswith("inception_resnet_v2") or set(arguments) != {"scale"}:
        return None
    if not _INCEPTION_RESNET_BLOCK.match(_layer_name(layer)):
        return None
    if _inbound_tensor_count(layer) != 2:
        return None
    code = _lambda_code(config.get("function"))
    if code is None or not all(marker in code for marker in (b"inputs", b"scale", b"inception_resnet_v2")):
        return None
    try:
        return float(arguments["scale"])
    except (TypeError, ValueError):
        return None


def _lambda_code(function: Any) -> bytes | None:
    # Keras 2 stores [base64(marshal(code)), defaults, closure]; Keras 3 a {"class_name": "__lambda__"} dict.
    encoded = function[0] if isinstance(function, list) and function else None
    if isinstance(function, dict):
        encoded = function.get("config", {}).get("code")
    if not isinstance(encoded, str):
        return None
    try:
        return base64.decodebytes(encoded.encode("ascii"))
    except (binascii.Error, ValueError):
        return None


def _inbound_tensor_count(layer: dict[str, Any]) -> int:
    nodes = layer.get("inbound_nodes") or []
    if len(nodes) != 1:
        return -1
    node = nodes[0]
    if isinstance(node, list):  # Keras 2: [[name, node_index, tensor_index, kwargs], ...]
        return len(node)
    args = node.get("args", []) if isinstance(node, dict) else []
    return len(args[0]) if len(args) == 1 and isinstance(args[0], list) else -1


def _as_residual_scale(layer: dict[str, Any], *, scale: float) -> None:
    config = layer["config"]
    layer["class_name"] = "ResidualScale"
    layer.pop("module", None)
    layer.pop("registered_name", None)
    layer["config"] = {
        "name": config.get("name", _layer_name(layer)),
        "trainable": config.get("trainable", True),
        "dtype": "float32",
        "scale": float(scale),
    }


def _deserialize(config: dict[str, Any]) -> keras.Model:
    from keras.src.legacy.saving import saving_utils  # Keras 3's reader of Keras 2 configs

    try:
        model = saving_utils.model_from_config(config, custom_objects={"ResidualScale": ResidualScale})
    except LegacyModelError:
        raise
    except Exception as exc:  # Keras raises TypeError, ValueError, KeyError... for configs it cannot read
        raise LegacyModelError(
            f"Keras 3 cannot rebuild this architecture: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(model, keras.Model):
        raise LegacyModelError(f"the file describes a {type(model).__name__}, not a model")
    if not model.built:
        _build_sequential(model, config)
    return model


def _build_sequential(model: keras.Model, config: dict[str, Any]) -> None:
    # A Keras 2 Sequential whose first layer is a nested model has no input shape of its own.
    shape = _first_input_shape(config)
    if shape is None:
        raise LegacyModelError("the model has no input shape in its config, so it cannot be built")
    model.build(shape)


def _first_input_shape(config: dict[str, Any]) -> tuple[int | None, ...] | None:
    for layer in _layer_configs(config):
        inner = layer.get("config", {})
        shape = inner.get("batch_input_shape") or inner.get("batch_shape")
        if shape:
            return tuple(shape)
    return None


# --- weights ---------------------------------------------------------------------------------------


def assign_weights(
    *, model: keras.Model, group: h5py.Group, original_names: dict[str, str] | None = None
) -> WeightReport:
    """Assign a Keras 2 ``model_weights`` group to ``model`` and prove every weight found its place.

    Layers are matched by name: at the top level by the file's layer groups, inside nested models
    by the layer name that ends each weight's path (``conv1/conv/kernel:0`` belongs to layer
    ``conv1/conv``). Within one layer, weights go in the file's order (Keras 2 and 3 create a
    layer's weights in the same order; each name and shape is checked). ``original_names`` maps
    renamed Keras 3 layers to their names in the file.
    """
    original_names = original_names or {}
    assigned: dict[int, str] = {}
    file_weights = values = layers = 0
    for top_name in _strings(group.attrs.get("layer_names", [])):
        layer_group = group[top_name]
        names = _strings(layer_group.attrs.get("weight_names", []))
        if not names:
            continue
        target = _top_level_layer(model, top_name, original_names)
        for leaf, pairs in _match_layer(
            target=target, top_name=top_name, names=names, original_names=original_names
        ):
            layers += 1
            for name, variable in pairs:
                array = np.asarray(layer_group[name])
                if tuple(array.shape) != tuple(variable.shape):
                    raise LegacyModelError(
                        f"weight {top_name}/{name} has shape {tuple(array.shape)} in the file but layer "
                        f"{leaf!r} expects {tuple(variable.shape)}"
                    )
                if id(variable) in assigned:
                    raise LegacyModelError(
                        f"weights {assigned[id(variable)]} and {name} both map to {leaf!r}"
                    )
                variable.assign(array.astype(variable.dtype))
                assigned[id(variable)] = name
                file_weights += 1
                values += int(array.size)
    unassigned = [variable.path for variable in model.weights if id(variable) not in assigned]
    if unassigned:
        raise LegacyModelError(
            f"{len(unassigned)} weights of the rebuilt model are not in the file, e.g. {unassigned[:3]}"
        )
    _finalize_preprocessing_layers(model)
    return WeightReport(
        file_weights=file_weights, model_weights=len(model.weights), values=values, layers=layers
    )


def _top_level_layer(
    model: keras.Model, file_name: str, original_names: dict[str, str]
) -> keras.layers.Layer:
    for layer in model.layers:
        if original_names.get(layer.name, layer.name) == file_name:
            return layer
    raise LegacyModelError(
        f"the file holds weights for layer {file_name!r}, which the rebuilt model does not have"
    )


def _match_layer(
    *, target: keras.layers.Layer, top_name: str, names: list[str], original_names: dict[str, str]
) -> Iterator[tuple[str, list[tuple[str, Any]]]]:
    """(layer name, [(file weight name, model variable)]) for one top-level layer group."""
    if not isinstance(target, keras.Model):
        yield top_name, _pair_in_order(leaf=target, names=names, where=top_name)
        return
    leaves: dict[str, list[keras.layers.Layer]] = defaultdict(list)
    for layer in _leaf_layers(target):
        leaves[original_names.get(layer.name, layer.name)].append(layer)
    by_leaf: dict[str, list[str]] = defaultdict(list)
    for name in names:
        by_leaf[_owning_layer(name, leaves)].append(name)
    for leaf_name, leaf_names in by_leaf.items():
        candidates = leaves.get(leaf_name, [])
        if len(candidates) != 1:
            problem = "has no layer" if not candidates else f"has {len(candidates)} layers"
            raise LegacyModelError(
                f"weight {leaf_names[0]!r} belongs to layer {leaf_name!r}, "
                f"but {top_name!r} {problem} of that name"
            )
        yield leaf_name, _pair_in_order(leaf=candidates[0], names=leaf_names, where=f"{top_name}/{leaf_name}")


def _owning_layer(weight_name: str, leaves: dict[str, list[keras.layers.Layer]]) -> str:
    """The longest layer name that ends the weight's path: outer scopes may prefix it."""
    prefix = weight_name.rsplit("/", 1)[0] if "/" in weight_name else ""
    matches = [name for name in leaves if prefix == name or prefix.endswith("/" + name)]
    return max(matches, key=len) if matches else prefix


def _pair_in_order(*, leaf: keras.layers.Layer, names: list[str], where: str) -> list[tuple[str, Any]]:
    variables = leaf.trainable_weights + leaf.non_trainable_weights  # Keras 2's saving order
    if len(variables) != len(names):
        raise LegacyModelError(
            f"layer {where!r} has {len(names)} weights in the file ({', '.join(names)}) but "
            f"{len(variables)} in the rebuilt model ({', '.join(v.name for v in variables)})"
        )
    for name, variable in zip(names, variables, strict=True):
        short = name.split("/")[-1].split(":")[0]
        if variable.name not in {short, _VARIABLE_ALIASES.get(short, short)}:
            raise LegacyModelError(
                f"layer {where!r}: file weight {name!r} would go to variable {variable.name!r}"
            )
    return list(zip(names, variables, strict=True))


def _leaf_layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        elif layer.weights:
            yield layer


def _finalize_preprocessing_layers(model: keras.Model) -> None:
    # Normalization derives its working mean/variance from the adapted state when finalized.
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.Normalization) and layer.input_mean is None:
            layer.finalize_state()


def _all_layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def _parse_json(raw: str | bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(_as_str(raw))
    except ValueError as exc:
        raise LegacyModelError(f"the file's model_config is not JSON: {exc}") from exc
    if not isinstance(parsed, dict) or "class_name" not in parsed:
        raise LegacyModelError("the file's model_config is not a Keras model config")
    return parsed


def _layer_name(layer: dict[str, Any]) -> str:
    # Keras 2 stores the name both at the top level and in "config"; Keras 3 only in "config".
    return str(layer.get("config", {}).get("name") or layer.get("name", ""))


def _as_str(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _strings(values) -> list[str]:
    return [_as_str(value) for value in values]
