"""Optional ONNX Runtime for CPU workers: the Keras model converted once, checked, then run by ORT.

On a 2-core CPU, ORT runs the seed's InceptionResNetV2 about 1.25x faster than TensorFlow (its NCHWc
convolution kernels; measured by ``benchmark_inference --runtime onnx``). Nothing about the model
changes: the ONNX file is converted from the loaded Keras model (tf2onnx, float32), so it computes the
same function in another engine.

- Converted once per weight file: the file is ``<cache dir>/<sha256 of the weights>-<converter>.onnx``,
  written atomically under a file lock, so workers sharing the directory convert it once between them.
  Converting the seed takes about 90 s on 2 cores and about 12 GB of memory at its peak, in a child
  process (``inference.onnx_convert``); ``python manage.py convert_onnx`` does it ahead.
- Checked at every load: a fixed probe batch goes through Keras and ORT, and the largest difference
  of any output must stay within ``TOLERANCE``. A stale or damaged file is converted again once;
  a mismatch after that raises ``OnnxRuntimeError`` and the predictor falls back to Keras.
- What is converted is the predictor's network, cut at the Grad-CAM layer where it can be: ORT
  returns the feature maps with the outputs, and a heat map needs only a pass back through the small
  head, in Keras (``inference.gradcam.cams_from_features``).

A model installed as an ``.onnx`` file is another matter: ``load_onnx_classifier`` serves that file
as it is (no Keras model exists to convert or compare with, so no Grad-CAM either).
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np

from inference import onnx_convert

logger = logging.getLogger(__name__)

RUNTIME_KERAS = "keras"
RUNTIME_ONNX = "onnx"
RUNTIMES = (RUNTIME_KERAS, RUNTIME_ONNX)
OPSET = onnx_convert.OPSET
# Float32 in both engines; the seed's outputs differ by about 1e-7 (probabilities).
TOLERANCE = 1e-4
PROBE_IMAGES = 4


class OnnxRuntimeError(RuntimeError):
    """ONNX Runtime cannot serve this model: not installed, conversion failed, or outputs differ."""


def default_cache_dir() -> Path:
    """``MSKDETECT_ONNX_DIR`` from the environment, else ``var/onnx`` in the repository."""
    configured = os.environ.get("MSKDETECT_ONNX_DIR")
    return Path(configured) if configured else Path(__file__).resolve().parent.parent / "var" / "onnx"


def _converter_tag() -> str:
    import onnxruntime
    import tf2onnx

    return f"tf2onnx{tf2onnx.__version__}-opset{OPSET}-ort{onnxruntime.__version__.split('.')[0]}"


def converted_path(*, cache_dir: Path, version: str) -> Path:
    """Where the ONNX form of the weight file with this sha256 lives."""
    return Path(cache_dir) / f"{version}-{_converter_tag()}.onnx"


@dataclass(frozen=True)
class OnnxModel:
    """A converted model in an ORT session; called on a numpy batch, it returns every model output."""

    session: object  # onnxruntime.InferenceSession
    input_name: str
    path: Path
    max_difference: float  # the largest output difference from Keras at the load-time check

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})


@dataclass(frozen=True)
class OnnxClassifier(OnnxModel):
    """A classifier delivered as an ONNX file and served as it is (no Keras model behind it).

    Called on an NHWC batch like every model here; a channels-first model (PyTorch exports) gets it
    transposed. ``max_difference`` is 0: nothing was converted, so there is nothing to compare.
    """

    input_size: tuple[int, int] = (224, 224)  # (height, width)
    channels_first: bool = False
    fixed_batch: int | None = None  # the batch size the file fixes (PyTorch exports often fix 1)

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        if self.channels_first:
            batch = np.transpose(batch, (0, 3, 1, 2))
        run, step = super().__call__, self.fixed_batch
        if step is None or len(batch) == step:
            return run(batch)
        pieces = []
        for start in range(0, len(batch), step):
            piece = batch[start : start + step]
            padded = np.zeros((step, *batch.shape[1:]), dtype=np.float32)
            padded[: len(piece)] = piece
            pieces.append([output[: len(piece)] for output in run(padded)])
        return [np.concatenate(outputs) for outputs in zip(*pieces, strict=True)]


def load_onnx_classifier(path: Path) -> OnnxClassifier:
    """An ONNX image classifier in an ORT session, with the input size its file fixes.

    The input must be one float32 image batch, (N, H, W, 3) or (N, 3, H, W), with H and W fixed in
    the file: preprocessing resizes to them. Raises ``OnnxRuntimeError`` saying what is wrong, worded
    to follow the file's name ("model file X.onnx for XR_WRIST has input ...").
    """
    try:
        session = _session(Path(path))
    except ImportError as exc:
        raise OnnxRuntimeError(f"ONNX Runtime is not installed: {exc}") from exc
    except Exception as exc:  # ORT's parser raises assorted errors for a damaged or foreign file
        raise OnnxRuntimeError(f"is not a model ONNX Runtime can run: {exc}") from exc
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise OnnxRuntimeError(f"takes {len(inputs)} inputs, but an image classifier takes one")
    model_input = inputs[0]
    shape = list(model_input.shape)
    if model_input.type != "tensor(float)" or len(shape) != 4:
        raise OnnxRuntimeError(
            f"has input {model_input.name!r} of {model_input.type} {shape}; expected a float32 image batch "
            "(N, H, W, 3) or (N, 3, H, W)"
        )
    channels_first = shape[3] != 3 and shape[1] == 3
    if not channels_first and shape[3] != 3:
        raise OnnxRuntimeError(f"has input {model_input.name!r} {shape}: not 3-channel (RGB) images")
    height, width = shape[2:4] if channels_first else shape[1:3]
    if not (isinstance(height, int) and isinstance(width, int)):
        raise OnnxRuntimeError(
            f"has input {model_input.name!r} {shape}, which leaves the image size open; export the model "
            "with a fixed height and width (the size it was trained at), so preprocessing knows it"
        )
    return OnnxClassifier(
        session=session,
        input_name=model_input.name,
        path=Path(path),
        max_difference=0.0,
        input_size=(height, width),
        channels_first=channels_first,
        fixed_batch=shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None,
    )


def convert(model: keras.Model, *, path: Path) -> None:
    """Write the model as ONNX (float32, any batch size, its outputs in order) to ``path``, atomically.

    tf2onnx runs in a child process (``inference.onnx_convert``) on a saved copy of the model: its
    peak memory (about 12 GB for the seed) goes back to the system when the child exits.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".converting-") as work:
        saved, converted = Path(work) / "model.keras", Path(work) / "model.onnx"
        model.save(saved)
        command = [sys.executable, "-m", "inference.onnx_convert", str(saved), str(converted)]
        completed = subprocess.run(
            command, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent, check=False
        )
        if completed.returncode != 0 or not converted.is_file():
            last_lines = " | ".join(completed.stderr.strip().splitlines()[-3:])
            raise OnnxRuntimeError(f"tf2onnx could not convert model {model.name!r}: {last_lines}")
        os.replace(converted, path)


def _session(path: Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    # ORT_ENABLE_ALL adds the NCHWc layout transform: 1.4x faster than the extended level here.
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def probe_batch(input_shape: tuple[int, ...]) -> np.ndarray:
    """A fixed batch for the check: half in the seed's [0, 1/255] range, half in [0, 1]."""
    rng = np.random.default_rng(20240131)
    batch = rng.random((PROBE_IMAGES, *input_shape[1:]), dtype=np.float32)
    batch[: PROBE_IMAGES // 2] /= 255.0
    return batch


def max_difference(*, reference: Callable[[np.ndarray], list[np.ndarray]], onnx_model: OnnxModel) -> float:
    """The largest difference between the two engines' outputs on the probe batch.

    Absolute for outputs within [-1, 1] (probabilities); relative to the largest value for outputs
    that grow beyond (feature maps).
    """
    batch = probe_batch(tuple(onnx_model.session.get_inputs()[0].shape))
    expected, actual = reference(batch), onnx_model(batch)
    if len(expected) != len(actual):
        return float("inf")
    return max(
        float(np.max(np.abs(want - got)) / max(1.0, float(np.max(np.abs(want)))))
        if want.shape == got.shape
        else float("inf")
        for want, got in zip(expected, actual, strict=True)
    )


@contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_loaded: dict[Path, OnnxModel] = {}
_loaded_lock = threading.Lock()


def load_onnx_model(
    *,
    model: keras.Model,
    version: str,
    reference: Callable[[np.ndarray], list[np.ndarray]],
    cache_dir: Path | None = None,
    tolerance: float = TOLERANCE,
) -> OnnxModel:
    """The ORT form of ``model`` (weights sha256 ``version``): converted if needed, then checked.

    ``reference`` is the Keras inference call (all outputs) the ORT outputs are compared with. Loaded once per
    process and file. Raises ``OnnxRuntimeError`` when ORT cannot serve the model faithfully.
    """
    try:
        path = converted_path(cache_dir=Path(cache_dir or default_cache_dir()), version=version)
    except ImportError as exc:
        raise OnnxRuntimeError(f"ONNX Runtime is not installed: {exc}") from exc
    with _loaded_lock:
        cached = _loaded.get(path)
    if cached is not None:
        return cached
    with _file_lock(path.with_suffix(".lock")):
        onnx_model = _load_checked(model=model, path=path, reference=reference, tolerance=tolerance)
    logger.info(
        "ONNX Runtime serves %s from %s (largest difference from Keras %.1e)",
        model.name,
        path,
        onnx_model.max_difference,
    )
    with _loaded_lock:
        _loaded[path] = onnx_model
    return onnx_model


def _load_checked(*, model, path: Path, reference, tolerance: float) -> OnnxModel:
    if path.is_file():
        try:
            return _checked(model=model, path=path, reference=reference, tolerance=tolerance)
        except OnnxRuntimeError as exc:  # stale or damaged: one fresh conversion
            logger.warning("Converting %s to ONNX again: %s", model.name, exc)
    else:
        logger.info("Converting %s to ONNX at %s", model.name, path)
    convert(model, path=path)
    return _checked(model=model, path=path, reference=reference, tolerance=tolerance)


def _checked(*, model, path: Path, reference, tolerance: float) -> OnnxModel:
    try:
        session = _session(path)
        onnx_model = OnnxModel(
            session=session, input_name=session.get_inputs()[0].name, path=path, max_difference=0.0
        )
        difference = max_difference(reference=reference, onnx_model=onnx_model)
    except Exception as exc:  # a damaged file fails in ORT's parser with assorted errors
        raise OnnxRuntimeError(f"{path.name} cannot be run by ONNX Runtime: {exc}") from exc
    if difference > tolerance:
        raise OnnxRuntimeError(
            f"{path.name}: outputs differ from Keras for {model.name!r} by {difference:.2e} "
            f"(tolerance {tolerance:.0e})"
        )
    return replace(onnx_model, max_difference=difference)


def forget_loaded() -> None:
    """Drop the process's loaded ORT sessions (tests; a model upgrade reloads by new sha256 anyway)."""
    with _loaded_lock:
        _loaded.clear()
