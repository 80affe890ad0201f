"""Grad-CAM heat maps (Selvaraju et al., 2017) and their overlay on the radiograph.

The target is the last layer with a 4-D output. For the seed architecture that layer lives inside
the nested InceptionResNetV2 base (``conv_7b_ac``, the base's own output).

Where the layers after the target form a chain (the seed, Sequential models, functional models with
a plain head), the model is cut there (``feature_split``): one forward pass returns the feature maps
with the outputs, in Keras or in ONNX Runtime, and the gradient comes from re-running only the head
on the feature maps. Elsewhere (a target inside a base, before its output; a branching head) a grad
model runs the whole network under the tape.

The class score is the class's log-odds computed from the final Dense layer's logits: the softmax
output itself saturates for confident predictions, and its gradient then vanishes.
"""

from __future__ import annotations

import io
import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import keras
import matplotlib
import numpy as np
import tensorflow as tf
from PIL import Image
from skimage.transform import resize

from inference.decoding import DecodedImage
from inference.preprocessing import INPUT_SIZE, SeedProfile, to_display_uint8

logger = logging.getLogger(__name__)

OVERLAY_MAX_ALPHA = 0.5

Forward = Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]


@dataclass(frozen=True)
class FeatureSplit:
    """A model cut at its Grad-CAM layer: one forward pass gives the feature maps and the outputs.

    The head (the layers from the feature maps to the last layer) is small for a CNN classifier, so
    the class score's gradient is computed by re-running only the head: a study's predictions and
    heat maps cost one pass through the network, in either runtime.
    """

    features_model: keras.Model  # model input -> [feature maps, model outputs]
    head: tuple[keras.layers.Layer, ...]  # feature maps -> the last layer's input
    last_layer: keras.layers.Layer


_splits: weakref.WeakKeyDictionary[keras.Model, FeatureSplit | None] = weakref.WeakKeyDictionary()
_splits_lock = threading.Lock()


def feature_split(model: keras.Model) -> FeatureSplit | None:
    """The model cut at its last 4-D layer (made once per model), or None where it cannot be cut.

    It can be cut when the layers after the target form a chain to the output: Sequential models,
    the seed (its nested base ends at ``conv_7b_ac``) and functional models with a chain head.
    """
    with _splits_lock:
        if model in _splits:
            return _splits[model]
        try:
            split = _build_split(model, layer_name=None)
        except ValueError:  # no 4-D layer: no heat maps at all
            split = None
        except Exception:  # an unusual graph Keras cannot rebuild: Grad-CAM's grad model serves it
            logger.exception("Cannot cut %s at its Grad-CAM layer; heat maps take a second pass", model.name)
            split = None
        _splits[model] = split
        return split


def _build_split(model: keras.Model, *, layer_name: str | None) -> FeatureSplit | None:
    layers = model.layers
    last_layer = layers[-1]
    target_index = _target_layer(layers[:-1], layer_name)
    target = layers[target_index]
    head = tuple(layers[target_index + 1 : -1])
    if isinstance(target, keras.Model):
        inner = target.layers[_target_layer(target.layers, layer_name)]
        if inner.output is not target.outputs[0]:
            return None  # the target lies inside the base, before its output
    if isinstance(model, keras.Sequential):
        # A loaded Sequential's layer.input/.output belong to a graph rebuilt at load time, not
        # always the one model.inputs starts; calling the layers in order is always right.
        inputs = keras.Input(shape=model.input_shape[1:])
        features = inputs
        for layer in layers[: target_index + 1]:
            features = layer(features)
        outputs = features
        for layer in (*head, last_layer):
            outputs = layer(outputs)
        return FeatureSplit(keras.Model(inputs, [features, outputs]), head, last_layer)
    target_output = _outer_output(target)
    if not _is_chain(target_output, (*head, last_layer)) or len(model.outputs) != 1:
        return None
    # One input as a tensor, not a one-item list: callers pass a tensor.
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return FeatureSplit(keras.Model(inputs, [target_output, model.outputs[0]]), head, last_layer)


def _outer_output(layer: keras.layers.Layer) -> keras.KerasTensor:
    # A nested model's ``output`` is its own graph's tensor; the call in the outer graph is its node.
    nodes = getattr(layer, "_inbound_nodes", [])
    if isinstance(layer, keras.Model) and len(nodes) == 1:
        return nodes[0].output_tensors[0]
    return layer.output


def _is_chain(start: keras.KerasTensor, layers: tuple[keras.layers.Layer, ...]) -> bool:
    current = start
    for layer in layers:
        try:
            if layer.input is not current:
                return False
        except (AttributeError, ValueError):  # a shared layer or one with several inputs
            return False
        current = layer.output
    return True


def cams_from_features(
    split: FeatureSplit, feature_maps: np.ndarray, *, class_index: int = 0, sign: float = 1.0
) -> np.ndarray:
    """Grad-CAM maps (N, h, w) in [0, 1] from the target layer's feature maps, through the head only.

    ``sign=-1`` maps the evidence against output ``class_index``: the abnormal class of a one-unit
    sigmoid model whose output is P(normal) (``ModelSpec.abnormal_sign``).
    """
    features = tf.constant(np.asarray(feature_maps, dtype=np.float32))
    with tf.GradientTape() as tape:
        tape.watch(features)
        outputs = features
        for layer in split.head:
            outputs = layer(outputs, training=False)
        score = sign * _class_score(split.last_layer, outputs, class_index=class_index)
    return _normalised_cams(features, tape.gradient(score, features))


def gradcam_heatmaps(
    model: keras.Model,
    batch: np.ndarray,
    *,
    class_index: int = 0,
    sign: float = 1.0,
    layer_name: str | None = None,
) -> np.ndarray:
    """Grad-CAM maps (N, h, w) in [0, 1] for ``class_index`` at the last 4-D layer (or ``layer_name``).

    ``batch`` is the preprocessed model input. Pass ``class_index=spec.abnormal_index`` for a model
    whose labels do not start with "abnormal", and ``sign=spec.abnormal_sign`` for a sigmoid model
    of P(normal). An image with no positive evidence gets all zeros.
    """
    inputs = tf.constant(np.asarray(batch, dtype=np.float32))
    split = feature_split(model) if layer_name is None else _build_split(model, layer_name=layer_name)
    if split is not None:
        feature_maps, _ = split.features_model(inputs, training=False)
        return cams_from_features(split, feature_maps, class_index=class_index, sign=sign)
    forward, last_layer = _forward_to_last_layer(model, layer_name=layer_name)
    with tf.GradientTape() as tape:
        feature_maps, last_input = forward(inputs)
        score = sign * _class_score(last_layer, last_input, class_index=class_index)
    return _normalised_cams(feature_maps, tape.gradient(score, feature_maps))


def _normalised_cams(feature_maps: tf.Tensor, gradients: tf.Tensor) -> np.ndarray:
    channel_weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    cams = tf.nn.relu(tf.reduce_sum(channel_weights * feature_maps, axis=-1)).numpy()
    peaks = cams.max(axis=(1, 2), keepdims=True)
    return np.where(peaks > 0, cams / np.where(peaks > 0, peaks, 1), 0.0).astype(np.float32)


def _class_score(last_layer: keras.layers.Layer, last_input: tf.Tensor, *, class_index: int) -> tf.Tensor:
    activation = getattr(last_layer, "activation", None)
    activation_name = getattr(activation, "__name__", "")
    logits = None
    if isinstance(last_layer, keras.layers.Dense) and activation_name in {"softmax", "sigmoid"}:
        logits = tf.matmul(last_input, last_layer.kernel) + last_layer.bias
    elif isinstance(last_layer, keras.layers.Activation) and activation_name in {"softmax", "sigmoid"}:
        logits = last_input  # the notebook's Dense(2) then Activation("softmax"): its input is the logits
    if logits is not None:
        if activation_name == "sigmoid":
            return logits[:, class_index]
        others = tf.concat([logits[:, :class_index], logits[:, class_index + 1 :]], axis=1)
        return logits[:, class_index] - tf.reduce_logsumexp(others, axis=1)
    return last_layer(last_input, training=False)[:, class_index]


def has_gradcam_layer(model: keras.Model) -> bool:
    """True when the model has a layer with a 4-D output before its last: Grad-CAM has a target."""
    try:
        _target_layer(model.layers[:-1], None)
    except ValueError:
        return False
    return True


def _is_4d(layer: keras.layers.Layer) -> bool:
    if isinstance(layer, keras.Model) and not _is_4d_output(layer):
        # A base that pools itself (``pooling="avg"``): the target is inside, before its pooling.
        return any(_is_4d(inner) for inner in layer.layers if not isinstance(inner, keras.layers.InputLayer))
    return _is_4d_output(layer)


def _is_4d_output(layer: keras.layers.Layer) -> bool:
    try:
        return len(layer.output.shape) == 4
    except (AttributeError, ValueError):
        return False


def _target_layer(layers: list[keras.layers.Layer], layer_name: str | None) -> int:
    for index in reversed(range(len(layers))):
        layer = layers[index]
        if layer_name is not None:
            nested_names = {inner.name for inner in getattr(layer, "layers", [])}
            if layer.name == layer_name or layer_name in nested_names:
                return index
        elif _is_4d(layer):
            return index
    wanted = f"layer {layer_name!r}" if layer_name else "a layer with a 4-D output"
    raise ValueError(f"the model has no {wanted} for Grad-CAM")


def _forward_to_last_layer(
    model: keras.Model, *, layer_name: str | None
) -> tuple[Forward, keras.layers.Layer]:
    layers = model.layers
    last_layer = layers[-1]
    target_index = _target_layer(layers[:-1], layer_name)
    target = layers[target_index]
    before, after = layers[:target_index], layers[target_index + 1 : -1]
    # Reached only where feature_split cannot cut the model: a Sequential is always cut unless its
    # target lies inside a nested base.
    if isinstance(target, keras.Model):
        inner_target = target.layers[_target_layer(target.layers, layer_name)]
        target_call = keras.Model(target.inputs, [inner_target.output, target.outputs[0]])
    else:
        grad_model = keras.Model(model.inputs, [target.output, last_layer.input])

        def forward_functional(inputs: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            feature_maps, last_input = grad_model(inputs, training=False)
            return feature_maps, last_input

        return forward_functional, last_layer

    def forward(inputs: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        outputs = inputs
        for layer in before:
            if not isinstance(layer, keras.layers.InputLayer):  # a functional model lists its Input
                outputs = layer(outputs, training=False)
        feature_maps, outputs = target_call(outputs, training=False)
        for layer in after:
            outputs = layer(outputs, training=False)
        return feature_maps, outputs

    return forward, last_layer


def input_region(*, preprocessing: str | None) -> tuple[float, float, float, float]:
    """The part of the original image (top, left, bottom, right as fractions) the model input shows."""
    if preprocessing == SeedProfile.name:
        # Resize to 300 x 300, then a centre crop of 224: the borders never reach the model.
        low = (SeedProfile.resize_to - INPUT_SIZE) // 2 / SeedProfile.resize_to
        high = low + INPUT_SIZE / SeedProfile.resize_to
        return (low, low, high, high)
    return (0.0, 0.0, 1.0, 1.0)


def _gray_uint8(image: DecodedImage) -> np.ndarray:
    pixels = to_display_uint8(image)
    if pixels.dtype == np.bool_:
        pixels = pixels.astype(np.uint8) * 255
    if pixels.ndim == 3:
        channels = pixels.shape[2]
        colour = pixels[:, :, : 3 if channels >= 3 else 1].astype(np.float32)
        pixels = np.rint(colour.mean(axis=2)).astype(np.uint8)
    return pixels


def heatmap_overlay_png(
    image: DecodedImage, heatmap: np.ndarray, *, preprocessing: str | None = None
) -> bytes:
    """The radiograph (8-bit gray) with the heat map in the 'jet' colour map over it, as PNG bytes.

    Same size as the original image. Pass the model's ``preprocessing`` profile name so the heat
    map lands on the region the model saw (the seed profile crops the borders away).
    """
    gray = _gray_uint8(image).astype(np.float32) / 255.0
    height, width = gray.shape
    top, left, bottom, right = input_region(preprocessing=preprocessing)
    row0, row1 = round(top * height), round(bottom * height)
    col0, col1 = round(left * width), round(right * width)
    heat = np.zeros((height, width), dtype=np.float32)
    if row1 > row0 and col1 > col0:
        region = resize(np.clip(heatmap, 0.0, 1.0).astype(np.float32), (row1 - row0, col1 - col0), order=1)
        heat[row0:row1, col0:col1] = np.clip(region, 0.0, 1.0)
    colours = matplotlib.colormaps["jet"](heat)[:, :, :3]
    # Where there is no heat, the radiograph shows unchanged; the hottest areas are half colour.
    alpha = (OVERLAY_MAX_ALPHA * heat)[:, :, np.newaxis]
    blended = (1.0 - alpha) * gray[:, :, np.newaxis] + alpha * colours
    rgb = np.rint(np.clip(blended, 0.0, 1.0) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()
