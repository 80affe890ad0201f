"""Opening a model file, whatever its format, into something the predictor can run.

- Keras 2 legacy HDF5 (``.h5``/``.hdf5`` from TF 2.x): the config is translated and rebuilt, the
  weights assigned and checked (``inference.keras2_legacy``);
- Keras 3 HDF5 and ``.keras``: Keras 3's own loader;
- a TF SavedModel folder (``saved_model.pb``): its serving signature, wrapped as a Keras layer (no
  Grad-CAM: the graph is opaque);
- ``.onnx``: ONNX Runtime as it is (no Keras, no Grad-CAM).

Every model is built under the float32 policy: inference here is float32 whatever the file was
trained under (``mixed_float16`` included).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import keras

from inference.keras2_legacy import LegacyModelError, load_legacy_hdf5
from inference.onnx_runtime import OnnxClassifier, OnnxRuntimeError, load_onnx_classifier

HDF5_SUFFIXES = {".h5", ".hdf5"}
SAVED_MODEL_MARKER = "saved_model.pb"


class ModelFileError(RuntimeError):
    """The file cannot be opened as a model; the message says why (the caller names the file)."""


@dataclass(frozen=True)
class OpenedModel:
    model: keras.Model | OnnxClassifier
    format: str  # what the file was, in words
    check: str  # what the load proved, in words


def is_model_path(path: Path) -> bool:
    """True when ``path`` is a file, or a SavedModel folder."""
    return path.is_file() or (path.is_dir() and (path / SAVED_MODEL_MARKER).is_file())


@contextmanager
def float32_policy() -> Iterator[None]:
    """Build models under float32; the policy is global in Keras, so restore the caller's."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def open_model(path: Path) -> OpenedModel:
    """Open the model at ``path``; ``ModelFileError`` says why one cannot be opened."""
    suffix = path.suffix.lower()
    if path.is_dir():
        if not (path / SAVED_MODEL_MARKER).is_file():
            raise ModelFileError(f"is a folder without {SAVED_MODEL_MARKER}: not a TF SavedModel")
        return _open_saved_model(path)
    if suffix in HDF5_SUFFIXES:
        return _open_hdf5(path)
    if suffix == ".keras":
        return _open_with_keras(path, format="Keras 3 (.keras)")
    if suffix == ".onnx":
        try:
            return OpenedModel(
                model=load_onnx_classifier(path), format="ONNX", check="served by ONNX Runtime as it is"
            )
        except OnnxRuntimeError as exc:
            raise ModelFileError(str(exc)) from exc
    raise ModelFileError(
        "has an unknown format (expected .h5, .hdf5, .keras, .onnx or a TF SavedModel folder)"
    )


def _open_hdf5(path: Path) -> OpenedModel:
    try:
        with h5py.File(path, "r") as handle:
            version = handle.attrs.get("keras_version", b"")
    except OSError as exc:
        raise ModelFileError(f"is not a readable HDF5 file: {exc}") from exc
    version = version.decode() if isinstance(version, bytes) else str(version)
    if version.startswith("3."):
        return _open_with_keras(path, format=f"Keras {version} HDF5")
    try:
        with float32_policy():
            legacy = load_legacy_hdf5(path)
    except LegacyModelError as exc:
        raise ModelFileError(f"is a Keras {version or '2'} HDF5 file that cannot be rebuilt: {exc}") from exc
    except OSError as exc:  # truncated or damaged datasets surface when read
        raise ModelFileError(f"is not a readable HDF5 file: {exc}") from exc
    report = legacy.weights
    lambdas = (
        f", {legacy.replaced_lambdas} Lambda layers identified and replaced"
        if legacy.replaced_lambdas
        else ""
    )
    return OpenedModel(
        model=legacy.model,
        format=f"Keras {legacy.keras_version} legacy HDF5",
        check=(
            f"all {report.file_weights} weights in the file ({report.values:,} values) went to "
            f"{report.layers} layers of the same shape, and every model weight was loaded{lambdas}"
        ),
    )


def _open_with_keras(path: Path, *, format: str) -> OpenedModel:
    try:
        with float32_policy():
            model = keras.saving.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for bad archives; all mean "cannot load"
        raise ModelFileError(f"could not be loaded by Keras: {type(exc).__name__}: {exc}") from exc
    return OpenedModel(model=model, format=format, check="loaded by Keras 3")


def _open_saved_model(path: Path) -> OpenedModel:
    try:
        with float32_policy():
            layer = keras.layers.TFSMLayer(str(path), call_endpoint="serving_default")
            specs = layer.call_endpoint_fn.structured_input_signature[1]
            if len(specs) != 1:
                raise ModelFileError(
                    f"SavedModel's serving signature takes {len(specs)} inputs, not one image"
                )
            ((input_name, input_spec),) = specs.items()
            inputs = keras.Input(shape=tuple(input_spec.shape[1:]), name=input_name)
            outputs = layer(inputs)
            if isinstance(outputs, dict):
                if len(outputs) != 1:
                    raise ModelFileError(
                        f"SavedModel gives {len(outputs)} outputs ({', '.join(outputs)}), not one"
                    )
                outputs = next(iter(outputs.values()))
            model = keras.Model(inputs, outputs, name=path.name)
    except ModelFileError:
        raise
    except Exception as exc:  # TensorFlow raises many types for unreadable SavedModels
        raise ModelFileError(f"is not a loadable TF SavedModel: {type(exc).__name__}: {exc}") from exc
    return OpenedModel(model=model, format="TF SavedModel", check="its serving signature runs as saved")
