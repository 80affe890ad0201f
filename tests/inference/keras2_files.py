"""Keras 2 legacy HDF5 files made the way people made them, and what Keras 2 computes with them.

Two makers build the same architectures from the same builder functions (each takes the Keras 2
module as its first argument, so the code is one, line for line):

- **TensorFlow 2.10.1 under Python 3.10**, the original notebook's versions (genuine files: Lambda
  layers as Python 3.10 bytecode, ``keras_version`` 2.10.0, the OptimizerV2 classes). This module
  is itself the script that venv runs (``python keras2_files.py build|reference ...``); only the
  standard library is imported at module level, so it runs there without the project.
- **tf_keras** (the Keras 2 API on this Python 3.11), in the test session, for the fast suite:
  the same builders at small input sizes where the full size would be slow.

Every file is saved as people saved them: compiled, one optimizer step taken (in TF 2.10 through
``fit``), then ``model.save(path)``, or ``keras.callbacks.ModelCheckpoint(path)`` during ``fit`` as
the notebook did (full model, legacy HDF5, optimizer state). The reference outputs are Keras 2's
own, computed in **float32** by a clone holding the same weights: under ``mixed_float16`` Keras 2
computes in float16 (measured on the notebook's model: up to 0.125 from float32), while the
registry computes in float32, so float32 is the like-for-like reference.

A randomly initialised network (``weights=None``: nothing is downloaded) gives nearly the same
output for every radiograph, and an equality test on outputs that all sit at 0.5 +- 1e-6 cannot tell
a right load from a wrong one. So before saving, the last Dense layer is rescaled and centred on the
inputs the reference is computed on (``spread_outputs``): its logits spread with a standard
deviation of ``LOGIT_SPREAD`` and the probabilities over (0, 1).

The TF 2.10 files are cached under ``~/.cache/mskdetect/tf210/files-v2/<key>``; the key hashes the
generator section of this file (between the two ``GENERATOR`` markers) and the input arrays, so a
change to either rebuilds them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

# ==== GENERATOR BEGIN: this section is hashed into the TF 2.10 cache key ==============================

TF_VERSION = "2.10.1"
LOGIT_SPREAD = 1.5  # standard deviation of the calibrated logits: sigmoid outputs spread over ~(0.1, 0.9)
SEED_LABELS = ("abnormal", "normal")


@dataclass(frozen=True)
class Keras2Case:
    """One file of the matrix: an architecture, a dtype-policy order, and how it was saved.

    ``policy``: ``float32``; ``mixed_float16`` (built under it: the layers carry it and ``compile``
    wraps the optimizer in a LossScaleOptimizer); ``float32-then-mixed`` (the notebook's cell order:
    built and compiled under float32, then ``K.clear_session(); set_global_policy('mixed_float16')``
    before ``fit``, so the layers carry float32 and the optimizer is plain).
    ``saved_by``: ``save`` (``model.save(path)`` after fit) or ``checkpoint`` (``ModelCheckpoint``
    during fit).
    ``profile``/``labels``/``output``: the models.toml entry the file is installed with.
    """

    name: str
    builder: str  # name of a builder function in this module
    size: int
    profile: str
    labels: tuple[str, ...]
    output: str = "softmax"
    policy: str = "float32"
    saved_by: str = "save"
    optimizer_state: bool = True  # False: saved right after compile, before any step
    seed: int = 3

    @property
    def file_name(self) -> str:
        return f"{self.name}.h5"

    @property
    def inputs_key(self) -> str:
        """Cases with the same profile and input size share one input array."""
        return f"{self.profile}@{self.size}"


# --- Builders: (keras, optimizers, size) -> a compiled model ------------------------------------------
# ``keras`` is TF 2.10's ``tensorflow.keras`` or ``tf_keras``; ``optimizers`` is TF 2.10's
# ``keras.optimizers`` (OptimizerV2, the classes TF 2.10 saved) or ``tf_keras.optimizers.legacy``
# (the same classes in tf_keras), so both makers write the same optimizer configs.


def notebook_model(keras, optimizers, size):
    """The original train_model.ipynb, line for line (DESIGN.md, issue 9); only ``weights=None`` added."""
    assert size == 224, "the notebook's model is 224 x 224"
    Inception = keras.applications.InceptionResNetV2(
        include_top=False, weights=None, input_shape=(224, 224, 3)
    )
    input_image = keras.layers.Input((224, 224, 3))
    x = Inception(input_image)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(256)(x)
    x = keras.layers.Activation(activation="relu")(x)
    x = keras.layers.Dropout(0.5)(x)
    x = keras.layers.Dense(2)(x)
    out = keras.layers.Activation(activation="softmax")(x)
    model = keras.Model(inputs=input_image, outputs=out)
    model.compile(
        optimizer=optimizers.RMSprop(learning_rate=0.0001),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def sequential_seed_model(keras, optimizers, size):
    """The seed architecture as a Sequential with the activations inside Dense (the first fixture's)."""
    base = keras.applications.InceptionResNetV2(include_top=False, weights=None, input_shape=(size, size, 3))
    model = keras.Sequential(
        [
            base,
            keras.layers.Flatten(),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile(optimizer=optimizers.RMSprop(1e-4), loss="categorical_crossentropy")
    return model


def densenet169_mura(keras, optimizers, size):
    """The MURA paper's model: DenseNet169, global average pooling, one sigmoid output; Adam."""
    base = keras.applications.DenseNet169(include_top=False, weights=None, input_shape=(size, size, 3))
    inputs = keras.Input((size, size, 3))
    x = base(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=optimizers.Adam(1e-4), loss="binary_crossentropy", metrics=["accuracy"])
    return model


def densenet121_mixed(keras, optimizers, size):
    """DenseNet121 as the TF mixed-precision guide says: the last activation kept in float32."""
    base = keras.applications.DenseNet121(include_top=False, weights=None, input_shape=(size, size, 3))
    inputs = keras.Input((size, size, 3))
    x = base(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    x = keras.layers.Dense(1)(x)
    outputs = keras.layers.Activation("sigmoid", dtype="float32")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=optimizers.Adam(1e-4), loss="binary_crossentropy")
    return model


def mobilenet_v2_head(keras, optimizers, size):
    """MobileNetV2 with a Dense / BatchNormalization / Dropout head and two softmax outputs."""
    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(size, size, 3))
    inputs = keras.Input((size, size, 3))
    x = base(inputs, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Dropout(0.3)(x)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=optimizers.Adam(1e-3), loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def sequential_vgg16(keras, optimizers, size):
    """A Sequential around a nested VGG16: Flatten, Dense, Dropout, one sigmoid output; SGD."""
    model = keras.Sequential(
        [
            keras.applications.VGG16(include_top=False, weights=None, input_shape=(size, size, 3)),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer=optimizers.SGD(1e-3, momentum=0.9), loss="binary_crossentropy")
    return model


def resnet50_flat(keras, optimizers, size):
    """ResNet50 through ``input_tensor``: its layers sit in the top model (no nesting); Activation layers."""
    inputs = keras.Input((size, size, 3))
    base = keras.applications.ResNet50(include_top=False, weights=None, input_tensor=inputs)
    x = keras.layers.GlobalAveragePooling2D()(base.output)
    x = keras.layers.Dense(256)(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.Dropout(0.5)(x)
    x = keras.layers.Dense(2)(x)
    outputs = keras.layers.Activation("softmax")(x)
    model = keras.Model(base.input, outputs)
    model.compile(optimizer=optimizers.Adam(1e-4), loss="categorical_crossentropy")
    return model


def vgg19_gap_bn(keras, optimizers, size):
    """VGG19, global average pooling, BatchNormalization, one sigmoid output."""
    base = keras.applications.VGG19(include_top=False, weights=None, input_shape=(size, size, 3))
    inputs = keras.Input((size, size, 3))
    x = base(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.BatchNormalization()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=optimizers.Adam(1e-4), loss="binary_crossentropy")
    return model


def mobilenet_gap(keras, optimizers, size):
    """MobileNet (v1): global average pooling, Dropout, two softmax outputs."""
    base = keras.applications.MobileNet(include_top=False, weights=None, input_shape=(size, size, 3))
    inputs = keras.Input((size, size, 3))
    x = base(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.3)(x)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=optimizers.RMSprop(1e-4), loss="categorical_crossentropy")
    return model


def inception_v3_head(keras, optimizers, size):
    """InceptionV3: GAP, Dense(512), Dropout, one sigmoid output."""
    base = keras.applications.InceptionV3(include_top=False, weights=None, input_shape=(size, size, 3))
    inputs = keras.Input((size, size, 3))
    x = base(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(512, activation="relu")(x)
    x = keras.layers.Dropout(0.5)(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=optimizers.Adam(1e-4), loss="binary_crossentropy")
    return model


def xception_pooled(keras, optimizers, size):
    """Xception with ``pooling='avg'`` inside the base (its output is 2-D), two softmax outputs."""
    base = keras.applications.Xception(
        include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg"
    )
    inputs = keras.Input((size, size, 3))
    x = base(inputs)
    x = keras.layers.Dropout(0.4)(x)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=optimizers.Adam(1e-4), loss="categorical_crossentropy")
    return model


def efficientnet_b0_head(keras, optimizers, size):
    """EfficientNetB0 (Rescaling + Normalization inside the base), BatchNormalization head, sigmoid."""
    base = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(size, size, 3))
    inputs = keras.Input((size, size, 3))
    x = base(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=optimizers.Adam(1e-4), loss="binary_crossentropy")
    return model


NOTEBOOK_FLOAT32_LAYERS = Keras2Case(
    name="notebook-float32-layers",
    builder="notebook_model",
    size=224,
    profile="seed",
    labels=SEED_LABELS,
    policy="float32-then-mixed",
    saved_by="checkpoint",
)
NOTEBOOK_MIXED_LAYERS = Keras2Case(
    name="notebook-mixed-layers",
    builder="notebook_model",
    size=224,
    profile="seed",
    labels=SEED_LABELS,
    policy="mixed_float16",
    saved_by="checkpoint",
)
SEQUENTIAL_SEED = Keras2Case(
    name="sequential-seed-mixed",
    builder="sequential_seed_model",
    size=224,
    profile="seed",
    labels=SEED_LABELS,
    policy="mixed_float16",
    optimizer_state=False,  # the first genuine fixture saved right after compile
    seed=5,  # not the notebook's weights: a file mixed up with another would show
)

GENUINE_CASES: tuple[Keras2Case, ...] = (
    NOTEBOOK_FLOAT32_LAYERS,
    NOTEBOOK_MIXED_LAYERS,
    SEQUENTIAL_SEED,
    Keras2Case(
        name="densenet169-gap-sigmoid",
        builder="densenet169_mura",
        size=320,
        profile="keras-densenet-v1",
        labels=("abnormal",),
        output="sigmoid",
    ),
    Keras2Case(
        name="mobilenetv2-head-softmax",
        builder="mobilenet_v2_head",
        size=224,
        profile="keras-mobilenet-v2-v1",
        labels=("normal", "abnormal"),
        saved_by="checkpoint",
    ),
    Keras2Case(
        name="sequential-vgg16-sigmoid",
        builder="sequential_vgg16",
        size=224,
        profile="keras-vgg16-v1",
        labels=("abnormal",),
        output="sigmoid",
    ),
    Keras2Case(
        name="densenet121-mixed",
        builder="densenet121_mixed",
        size=224,
        profile="imagenet-meanstd-v1",
        labels=("abnormal",),
        output="sigmoid",
        policy="mixed_float16",
    ),
    Keras2Case(
        name="resnet50-flat-softmax",
        builder="resnet50_flat",
        size=224,
        profile="keras-resnet50-v1",
        labels=("abnormal", "normal"),
    ),
    Keras2Case(
        name="vgg19-gap-bn-sigmoid",
        builder="vgg19_gap_bn",
        size=224,
        profile="keras-vgg19-v1",
        labels=("abnormal",),
        output="sigmoid",
    ),
    Keras2Case(
        name="mobilenet-gap-softmax",
        builder="mobilenet_gap",
        size=224,
        profile="keras-mobilenet-v1",
        labels=("normal", "abnormal"),
    ),
    Keras2Case(
        name="inceptionv3-320",
        builder="inception_v3_head",
        size=320,
        profile="keras-inception-v3-v1",
        labels=("abnormal",),
        output="sigmoid",
    ),
    Keras2Case(
        name="xception-avgpool-softmax",
        builder="xception_pooled",
        size=224,
        profile="keras-xception-v1",
        labels=("abnormal", "normal"),
        saved_by="checkpoint",
    ),
    Keras2Case(
        name="efficientnetb0-bn-sigmoid",
        builder="efficientnet_b0_head",
        size=224,
        profile="keras-efficientnet-v1",
        labels=("abnormal",),
        output="sigmoid",
    ),
)


# --- Writing a file ----------------------------------------------------------------------------------


@dataclass
class Written:
    model: Any  # as saved
    float32_model: Any  # the same weights computing in float32 (``model`` itself when its layers do)
    amplification: float  # see spread_outputs


def write_case(
    keras, optimizers, case: Keras2Case, inputs, path: Path, *, train: bool, float32_twin: Any = None
) -> Written:
    """Build ``case``, take one optimizer step, spread its outputs on ``inputs``, save it to ``path``.

    ``train``: one step of ``fit`` on two of ``inputs`` (TF 2.10; see below why it moves no weight),
    else a zero-gradient optimizer step, which creates the same optimizer state (slots, iterations,
    loss-scale variables), and the callbacks called as ``fit`` calls them at an epoch's end. The
    fast suite always takes the zero step (no training trace to wait for), and so do layers that
    compute in float16: TF 2.10 trains a DenseNet121 under mixed_float16 on a CPU at ~25 s an
    image, and the step's trace in the file is the same. ``case.optimizer_state=False`` saves right
    after compile. The global policy is left as the case set it: callers restore it.
    ``float32_twin``: a float32 model of the same architecture to compute the spread with (it takes
    the model's weights), instead of cloning a mixed model: a clone costs as much as a build.
    """
    import numpy as np

    keras.utils.set_random_seed(case.seed)
    keras.mixed_precision.set_global_policy("mixed_float16" if case.policy == "mixed_float16" else "float32")
    model = globals()[case.builder](keras, optimizers, case.size)
    if case.policy == "float32-then-mixed":
        # The notebook's later cell, verbatim.
        keras.backend.clear_session()
        keras.mixed_precision.set_global_policy("mixed_float16")
    spread = _spread_callback(keras, inputs, float32_twin)
    callbacks = [spread]  # callbacks run in list order: the spread before ModelCheckpoint writes
    if case.saved_by == "checkpoint":
        callbacks.append(keras.callbacks.ModelCheckpoint(str(path), monitor="loss", save_best_only=True))
    if case.optimizer_state and train and case.policy != "mixed_float16":
        # The step runs through fit (and ModelCheckpoint, as the notebook's did) but moves no weight:
        # learning rate 0 and BatchNormalization momentum 1 while it runs, both restored before the
        # file is written, so the saved configs are the builder's. The optimizer's slots fill with
        # real gradient statistics. A moving step would ruin the test: Adam and RMSprop move every
        # weight by ~lr whatever its gradient, and one step moves BatchNormalization's moving
        # means by 1 % of the training-mode activations, which in a random network are ~1000 times
        # the inference-mode ones; the outputs then depend on rounding rather than on the image
        # (measured: TF 2.10 with and without oneDNN differed by 2.8e-4 on the notebook's model).
        learning_rate = float(keras.backend.get_value(model.optimizer.learning_rate))
        spread.restore = [(model.optimizer, "learning_rate", learning_rate)]
        model.optimizer.learning_rate = 0.0
        for layer in _all_layers(model):
            if type(layer).__name__ == "BatchNormalization":
                spread.restore.append((layer, "momentum", layer.momentum))
                layer.momentum = 1.0
        units = int(model.output_shape[-1])
        targets = np.eye(2, dtype="float32")[:, :1] if units == 1 else np.eye(units, dtype="float32")[:2]
        model.fit(inputs[:2], targets, batch_size=2, epochs=1, verbose=0, callbacks=callbacks)
    else:
        if case.optimizer_state:
            _optimizer_step_without_change(model)
        for callback in callbacks:
            callback.set_model(model)
            callback.on_epoch_end(0, logs={"loss": 1.0})
    if case.saved_by == "save":
        model.save(str(path))
    return Written(model=model, float32_model=spread.float32_model, amplification=spread.amplification)


def _spread_callback(keras, inputs, float32_twin):
    class SpreadOutputs(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.restore: list[tuple[Any, str, Any]] = []  # (owner, attribute, value) to put back first
            self.float32_model = None
            self.amplification = float("nan")

        def on_epoch_end(self, epoch, logs=None):
            for owner, attribute, value in self.restore:
                setattr(owner, attribute, value)
            self.float32_model, self.amplification = spread_outputs(
                keras, self.model, inputs, float32_twin=float32_twin
            )

    return SpreadOutputs()


def spread_outputs(keras, model, inputs, *, float32_twin: Any = None) -> tuple[Any, float]:
    """Rescale and centre the last Dense layer so its logits on ``inputs`` have std ``LOGIT_SPREAD``.

    One unit (sigmoid): the logit itself; two units (softmax): the difference of the two logits.
    Returns a float32 twin of the model (the model itself where its layers compute in float32) and
    the amplification: how many times a relative error in the features grows in the logits,
    relative to ``LOGIT_SPREAD`` (sum |feature * weight| over the std of the logits). Where it is
    large, the image-dependent part of the features is small beside a constant part, and rounding
    alone could exceed the test's tolerance: such a case proves nothing and is redesigned.
    The features come from the float32 twin (float16 convolutions on a CPU are ~10 times slower).
    """
    import numpy as np

    mixed = any(_is_mixed(layer) for layer in _all_layers(model))
    twin = model
    if mixed and float32_twin is not None:
        twin = float32_twin
        twin.set_weights(model.get_weights())
    elif mixed:
        twin = float32_clone(keras, model)
    dense_index = max(index for index, layer in enumerate(model.layers) if type(layer).__name__ == "Dense")
    features_model = keras.Model(twin.inputs, twin.layers[dense_index].input)
    features = np.asarray(features_model(inputs, training=False), dtype=np.float64)
    kernel, bias = model.layers[dense_index].get_weights()
    direction = kernel[:, 0] if kernel.shape[1] == 1 else kernel[:, 0] - kernel[:, 1]
    margins = features @ direction
    spread = max(float(np.std(margins)), 1e-30)
    scale = LOGIT_SPREAD / spread
    centre = float(np.mean(margins)) * scale
    new_bias = [-centre] if kernel.shape[1] == 1 else [-centre / 2, centre / 2]
    for owner in {id(model): model, id(twin): twin}.values():
        owner.layers[dense_index].set_weights([kernel * scale, np.asarray(new_bias, dtype=bias.dtype)])
    return twin, float(np.mean(np.abs(features * direction).sum(axis=1)) / spread)


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def _is_mixed(layer) -> bool:
    return layer.dtype_policy.compute_dtype != layer.dtype_policy.variable_dtype


def _optimizer_step_without_change(model) -> None:
    # Zero gradients: RMSprop, Adam and SGD(momentum) move nothing, but their slots and iteration
    # count are created, as after a real step, so the file holds optimizer state.
    import tensorflow as tf

    optimizer = model.optimizer
    variables = model.trainable_variables
    gradients = [tf.zeros_like(variable) for variable in variables]
    if hasattr(optimizer, "get_unscaled_gradients"):  # a LossScaleOptimizer: the calls fit makes
        optimizer.get_scaled_loss(tf.constant(0.0))
        gradients = optimizer.get_unscaled_gradients(gradients)
    optimizer.apply_gradients(zip(gradients, variables, strict=True))


def float32_clone(keras, model):
    """The same architecture with every layer's dtype policy set to float32, holding the same weights."""
    config = model.get_config()
    _set_float32(config)
    with _lambda_deserialization_allowed():
        clone = type(model).from_config(config)
    clone.set_weights(model.get_weights())
    return clone


@contextmanager
def _lambda_deserialization_allowed() -> Iterator[None]:
    # tf_keras refuses to rebuild a Lambda from bytecode unless told (it is our own model); TF 2.10
    # has no such check.
    try:
        from tf_keras.src.saving.serialization_lib import SafeModeScope
    except ImportError:
        yield
        return
    with SafeModeScope(False):
        yield


def _set_float32(value) -> None:
    if isinstance(value, dict):
        dtype = value.get("dtype")
        if isinstance(dtype, dict) or dtype in ("mixed_float16", "mixed_bfloat16"):
            value["dtype"] = "float32"
        for item in value.values():
            _set_float32(item)
    elif isinstance(value, list):
        for item in value:
            _set_float32(item)


def describe(keras, model) -> dict[str, Any]:
    """Where Grad-CAM's target lives: the nested base (if any) and its last layer with a 4-D output."""
    nested = [layer for layer in model.layers if hasattr(layer, "layers")]
    owner = nested[-1] if nested else model
    target = next(layer for layer in reversed(owner.layers) if len(layer.output_shape) == 4)
    return {
        "base_layer": owner.name if nested else None,
        "gradcam_layer": target.name,
        "gradcam_shape": list(target.output_shape[1:3]),
        "layer_count": len(model.layers) + sum(len(layer.layers) for layer in nested),
        "parameters": int(model.count_params()),
    }


# --- The TF 2.10 script ----------------------------------------------------------------------------


def _tf210_keras():
    import tensorflow as tf

    assert tf.__version__ == TF_VERSION, f"expected TensorFlow {TF_VERSION}, got {tf.__version__}"
    assert sys.version_info[:2] == (3, 10), f"expected Python 3.10, got {sys.version}"
    return tf.keras


def tf210_build(out_dir: Path, inputs_dir: Path, names: list[str]) -> None:
    """Write each case's file into ``out_dir``; ``build.json`` says what each holds and how long it took."""
    import numpy as np

    keras = _tf210_keras()
    report = {}
    for case in (case for case in GENUINE_CASES if case.name in names):
        started = time.perf_counter()
        inputs = np.load(inputs_dir / f"{case.inputs_key}.npy")
        path = out_dir / case.file_name
        try:
            written = write_case(keras, keras.optimizers, case, inputs, path, train=True)
            report[case.name] = {
                **describe(keras, written.model),
                "amplification": round(written.amplification, 1),
                "build_seconds": round(time.perf_counter() - started, 1),
            }
        finally:
            keras.mixed_precision.set_global_policy("float32")
            keras.backend.clear_session()
        print(f"built {case.name} in {report[case.name]['build_seconds']} s", flush=True)
    (out_dir / "build.json").write_text(json.dumps(report, indent=2), encoding="utf-8")


def tf210_reference(out_dir: Path, inputs_dir: Path, names: list[str]) -> None:
    """Load each file back in TF 2.10; write its float32 outputs and its ``model_config`` (pretty)."""
    import h5py
    import numpy as np

    keras = _tf210_keras()
    for case in (case for case in GENUINE_CASES if case.name in names):
        started = time.perf_counter()
        path = out_dir / case.file_name
        inputs = np.load(inputs_dir / f"{case.inputs_key}.npy")
        saved = keras.models.load_model(str(path), compile=False)
        reference = float32_clone(keras, saved)(inputs, training=False).numpy().astype(np.float32)
        np.save(out_dir / f"{case.name}.reference.npy", reference)
        with h5py.File(path, "r") as handle:
            config = json.loads(handle.attrs["model_config"])
        (out_dir / f"{case.name}.model_config.json").write_text(
            json.dumps(config, indent=2), encoding="utf-8"
        )
        keras.backend.clear_session()
        print(f"reference {case.name} in {time.perf_counter() - started:.1f} s", flush=True)


# ==== GENERATOR END ===================================================================================

GENUINE_CACHE = Path(os.environ.get("MSKDETECT_TF210_CACHE", Path.home() / ".cache" / "mskdetect" / "tf210"))
# The radiographs the TF 2.10 references are computed on: three formats, four body regions.
RADIOGRAPHS = (
    "jpeg/IMG0003301.jpg",
    "jpeg/IMG0003419.jpg",
    "png16/1068_1253423501_03_WRI-L2_F010.png",
    "png16/2830_1206360182_04_WRI-L1_M012.png",
    "dicom/NM_Kakadu44_SOTmarkerincons.dcm",
    "dicom/RG3_J2KR.dcm",
)


def generator_source() -> str:
    """The hashed section of this file: what the TF 2.10 files depend on."""
    text = Path(__file__).read_text(encoding="utf-8")
    begin = text.index("# ==== GENERATOR BEGIN")
    return text[begin : text.index("# ==== GENERATOR END", begin)]


def python310() -> str | None:
    """A working Python 3.10 (``MSKDETECT_PYTHON310``, ``python3.10`` on PATH, pyenv), else None."""
    # A pyenv shim for an inactive version exists but fails, so each candidate is run once.
    candidates = [os.environ.get("MSKDETECT_PYTHON310"), shutil.which("python3.10")]
    candidates += sorted(str(path) for path in Path.home().glob(".pyenv/versions/3.10*/bin/python3.10"))
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "--version"], capture_output=True, text=True, check=False)
        if probe.returncode == 0 and probe.stdout.startswith("Python 3.10"):
            return candidate
    return None


def tf210_venv_python(python: str) -> Path:
    """The cached TF 2.10.1 venv's interpreter, made with ``python`` (downloads ~600 MB) when missing."""
    venv = GENUINE_CACHE / "venv"
    interpreter = venv / "bin" / "python"
    if not interpreter.is_file():
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--quiet", f"tensorflow=={TF_VERSION}", "numpy<2"],
            check=True,
        )
    return interpreter


@dataclass(frozen=True)
class GenuineFiles:
    """The cached TF 2.10 files and, for each case, its inputs and TF 2.10's outputs on them."""

    folder: Path
    build: dict[str, dict[str, Any]] = field(repr=False)

    def path(self, case: Keras2Case) -> Path:
        return self.folder / case.file_name

    def inputs(self, case: Keras2Case):
        import numpy as np

        return np.load(self.folder / "inputs" / f"{case.inputs_key}.npy")

    def reference(self, case: Keras2Case):
        """TF 2.10's float32 outputs for ``inputs(case)``."""
        import numpy as np

        return np.load(self.folder / f"{case.name}.reference.npy")


def radiograph_batches(*, shared_data: Path, cases: tuple[Keras2Case, ...]) -> dict[str, Any]:
    """{inputs_key: float32 batch}: the radiographs through each case's profile at its size."""
    from inference.decoding import decode_image
    from inference.preprocessing import build_batch

    images = [decode_image((shared_data / name).read_bytes()) for name in RADIOGRAPHS]
    batches = {}
    for case in cases:
        if case.inputs_key not in batches:
            batches[case.inputs_key] = build_batch(
                images=images, profile=case.profile, size=(case.size, case.size)
            )
    return batches


def ensure_genuine_files(*, python: str, shared_data: Path) -> GenuineFiles:
    """TF 2.10's files for every genuine case and its references on the radiographs; built when missing.

    Built into a temporary folder, renamed when complete; a lock keeps two sessions from building
    at once. A build takes ~3.5 minutes on 2 cores (~2 to write the files, ~1 to load them back).
    """
    import fcntl

    import numpy as np

    batches = radiograph_batches(shared_data=shared_data, cases=GENUINE_CASES)
    key = hashlib.sha256(generator_source().encode("utf-8"))
    for name in sorted(batches):
        key.update(name.encode("utf-8"))
        key.update(np.ascontiguousarray(batches[name], dtype=np.float32).tobytes())
    folder = GENUINE_CACHE / "files-v2" / key.hexdigest()[:16]
    interpreter = tf210_venv_python(python)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "build.json").is_file():
            staging = folder.with_name(folder.name + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            (staging / "inputs").mkdir(parents=True)
            for name, batch in batches.items():
                np.save(staging / "inputs" / f"{name}.npy", batch.astype(np.float32))
            names = ",".join(case.name for case in GENUINE_CASES)
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONHASHSEED": "0"}
            for command in ("build", "reference"):
                subprocess.run(
                    [str(interpreter), __file__, command, str(staging), str(staging / "inputs"), names],
                    check=True,
                    env=env,
                )
            shutil.rmtree(folder, ignore_errors=True)
            staging.rename(folder)
            for stale in folder.parent.iterdir():  # older builds (~2.7 GB each) are never read again
                if stale.is_dir() and stale != folder:
                    shutil.rmtree(stale, ignore_errors=True)
    build = json.loads((folder / "build.json").read_text(encoding="utf-8"))
    return GenuineFiles(folder=folder, build=build)


# --- The fast suite: the same builders through tf_keras --------------------------------------------


def genuine_case(name: str) -> Keras2Case:
    return next(case for case in GENUINE_CASES if case.name == name)


def fast_case(name: str, *, size: int = 64, mixed: bool = False, new_optimizer: bool = False) -> Keras2Case:
    """A genuine case at a small input size (build and load times hardly depend on it; compute does).

    ``mixed``: built under mixed_float16. ``new_optimizer``: saved with tf_keras's default optimizer
    classes, as TF >= 2.11 saved files (another optimizer config and weight layout).
    """
    case = genuine_case(name)
    suffix = ("-mixed" if mixed else "") + ("-new-optimizer" if new_optimizer else "")
    return replace(case, name=name + suffix, size=size, policy="mixed_float16" if mixed else case.policy)


# The tf_keras equivalents the fast suite loads, besides the notebook's model (conftest's
# ``notebook_files``, at its real size): what issue 9 names, a flat functional model, a Sequential
# one under mixed_float16 and one saved with TF >= 2.11's optimizers. The cheap bases carry the
# variants: each case costs its build here and its rebuild in Keras 3 (~2-8 s each).
FAST_CASES: tuple[Keras2Case, ...] = (
    fast_case("densenet169-gap-sigmoid"),
    fast_case("mobilenetv2-head-softmax"),
    fast_case("sequential-vgg16-sigmoid"),
    fast_case("sequential-vgg16-sigmoid", mixed=True),
    fast_case("sequential-vgg16-sigmoid", new_optimizer=True),
    fast_case("resnet50-flat-softmax"),
)


@dataclass(frozen=True)
class Keras2File:
    """A Keras 2 file written in this session, its inputs and Keras 2's float32 outputs on them."""

    case: Keras2Case
    path: Path
    inputs: Any  # (N, size, size, 3) float32
    reference: Any  # Keras 2's float32 outputs for ``inputs``
    layout: dict[str, Any] = field(default_factory=dict)  # describe(): where Grad-CAM's target is


def fast_inputs(case: Keras2Case, *, count: int = 4, seed: int = 7):
    """Uniform random images in [0, 1], each image scaled differently, so that outputs differ visibly.

    Loading fidelity does not depend on the value range, so no profile is applied.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    scales = np.linspace(0.3, 1.0, count, dtype=np.float32).reshape(count, 1, 1, 1)
    return rng.random((count, case.size, case.size, 3), dtype=np.float32) * scales


def write_tf_keras_file(case: Keras2Case, *, folder: Path, inputs, float32_twin: Any = None) -> Keras2File:
    """Write ``case`` through tf_keras as TF 2.10 wrote it, and compute Keras 2's float32 outputs.

    The optimizer classes are ``tf_keras.optimizers.legacy`` (TF 2.10's), or tf_keras's default ones
    for a ``-new-optimizer`` case. ``float32_twin``: see ``write_case``.
    """
    return _write_tf_keras(case, folder=folder, inputs=inputs, float32_twin=float32_twin)[0]


def _write_tf_keras(
    case: Keras2Case, *, folder: Path, inputs, float32_twin: Any = None
) -> tuple[Keras2File, Any]:
    import tf_keras

    optimizers = tf_keras.optimizers if case.name.endswith("-new-optimizer") else tf_keras.optimizers.legacy
    path = folder / case.file_name
    try:
        with tf210_inception_resnet_v2(tf_keras):
            written = write_case(
                tf_keras, optimizers, case, inputs, path, train=False, float32_twin=float32_twin
            )
        reference = written.float32_model(inputs, training=False).numpy()
        layout = describe(tf_keras, written.model)
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")
    return Keras2File(
        case=case, path=path, inputs=inputs, reference=reference, layout=layout
    ), written.float32_model


def write_notebook_files(*, folder: Path, inputs) -> dict[str, Keras2File]:
    """The notebook's model in both cell orders; the second reuses the first as its float32 twin."""
    float32_layers, float32_model = _write_tf_keras(NOTEBOOK_FLOAT32_LAYERS, folder=folder, inputs=inputs)
    mixed_layers = write_tf_keras_file(
        NOTEBOOK_MIXED_LAYERS, folder=folder, inputs=inputs, float32_twin=float32_model
    )
    return {file.case.name: file for file in (float32_layers, mixed_layers)}


@contextmanager
def tf210_inception_resnet_v2(tf_keras) -> Iterator[None]:
    """tf_keras's InceptionResNetV2 with TF 2.10's residual-scaling Lambda layers, while inside.

    tf_keras 2.13+ replaced TF 2.10's ``Lambda(lambda inputs, scale: inputs[0] + inputs[1] * scale,
    output_shape=..., arguments={"scale": scale}, name=block_name)`` with a ``CustomScaleLayer``;
    files made with it would not hold the Lambda layers the seed files hold. This puts TF 2.10's
    Lambda back: the same function, arguments and names, serialised as this Python's bytecode. The
    function is compiled as if written in the applications module, as TF 2.10's was, so the file
    names that module and its source file as TF 2.10's files name theirs.
    """
    from tf_keras.src.applications import inception_resnet_v2

    source = "lambda inputs, scale: inputs[0] + inputs[1] * scale"
    residual_scaling = eval(compile(source, inception_resnet_v2.__file__, "eval"), vars(inception_resnet_v2))

    def scale_layer(scale):
        def call(inputs):
            x, up = inputs
            block_name = up._keras_history.layer.name.removesuffix("_conv")  # "block35_1_conv"
            return tf_keras.layers.Lambda(
                residual_scaling,
                output_shape=tf_keras.backend.int_shape(x)[1:],
                arguments={"scale": scale},
                name=block_name,
            )([x, up])

        return call

    original = inception_resnet_v2.CustomScaleLayer
    inception_resnet_v2.CustomScaleLayer = scale_layer
    try:
        yield
    finally:
        inception_resnet_v2.CustomScaleLayer = original


def _main(argv: list[str]) -> None:
    command, out_dir, inputs_dir, names = argv
    action = {"build": tf210_build, "reference": tf210_reference}[command]
    action(Path(out_dir), Path(inputs_dir), names.split(","))


if __name__ == "__main__":
    _main(sys.argv[1:])
