"""Batched prediction: the images of a study (or of several studies) in one compiled forward pass.

``model.predict`` per image costs about 205 ms an image for the seed on a CPU; one compiled call
costs 121 ms at batch 1 and 59 ms an image at batch 16. So images are preprocessed, stacked and sent
through a ``tf.function`` in chunks of ``batch_size``. A chunk shorter than ``batch_size`` is padded
up to the next power of two (capped at ``batch_size``): the function is traced for at most
log2(batch_size) + 1 shapes, and a padded chunk wastes less than half its work.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from inference.decoding import DecodedImage
from inference.gradcam import cams_from_features, feature_split, gradcam_heatmaps, has_gradcam_layer
from inference.onnx_runtime import (
    RUNTIME_KERAS,
    RUNTIME_ONNX,
    RUNTIMES,
    OnnxClassifier,
    OnnxRuntimeError,
    load_onnx_model,
)
from inference.ood import pooled_features
from inference.preprocessing import DEFAULT_SIZE, build_batch, get_profile
from inference.registry import ABNORMAL, LoadedModel, ModelSpec

logger = logging.getLogger(__name__)

UNVERSIONED = "unversioned"


@dataclass(frozen=True)
class ImagePrediction:
    abnormal_probability: float
    label: str


@dataclass(frozen=True)
class StudyPrediction:
    images: list[ImagePrediction]
    abnormal_probability: float  # mean of the images' P(abnormal), as in the MURA paper
    label: str  # abnormal, normal, or indeterminate (inside the model's band)
    threshold: float
    model_name: str
    model_version: str
    demo: bool
    preprocessing: str
    preprocess_ms: float
    inference_ms: float
    runtime: str = RUNTIME_KERAS
    # False where Grad-CAM cannot run: a model served from its ONNX file, or one with no 4-D layer.
    heatmaps_available: bool = True
    indeterminate: tuple[float, float] | None = None  # the model's band, None: no band


@dataclass(frozen=True)
class BatchResult:
    probabilities: np.ndarray  # P(abnormal) per image
    heatmaps: np.ndarray | None  # (N, h, w) Grad-CAM maps in [0, 1], when asked for and computed
    # (N, 2C) the Grad-CAM layer's feature maps pooled (inference.ood.pooled_features), from the same
    # forward pass; None where the model is not cut there (an ONNX file, a model with no 4-D layer).
    features: np.ndarray | None = None


_compiled: weakref.WeakKeyDictionary[keras.Model, Callable[[tf.Tensor], tf.Tensor]] = (
    weakref.WeakKeyDictionary()
)
_compiled_lock = threading.Lock()


def compiled_call(model: keras.Model) -> Callable[[tf.Tensor], tf.Tensor]:
    """The model's inference call as a ``tf.function``, made once per model object."""
    with _compiled_lock:
        function = _compiled.get(model)
        if function is None:
            # A weak reference: the cached function must not keep its own cache key alive.
            model_ref = weakref.ref(model)
            # jit_compile=False: XLA compilation of InceptionResNetV2 takes longer than it saves on CPU.
            function = tf.function(lambda batch: model_ref()(batch, training=False), jit_compile=False)
            _compiled[model] = function
        return function


def _padded_size(count: int, batch_size: int) -> int:
    size = 1
    while size < count:
        size *= 2
    return min(size, batch_size)


def spec_for_plain_model(*, model: keras.Model, preprocessing: str = "seed") -> ModelSpec:
    """A spec for a model that did not come from the registry (benchmarks): seed label order."""
    return ModelSpec(
        body_part="",
        name=model.name,
        path=Path(),
        preprocessing=preprocessing,
        labels=(ABNORMAL, "normal"),
        threshold=0.5,
        sha256=None,
        demo=False,
    )


def model_input_size(model: keras.Model | OnnxClassifier) -> tuple[int, int]:
    """(height, width) the model takes; 224 x 224 for a Keras model that accepts any size."""
    if isinstance(model, OnnxClassifier):
        return model.input_size
    inputs = getattr(model, "inputs", None)
    if not inputs or len(inputs[0].shape) != 4:  # a subclassed model declares no input shape
        return DEFAULT_SIZE
    height, width = inputs[0].shape[1:3]
    if height is None or width is None:
        return DEFAULT_SIZE
    return int(height), int(width)


def _output_width(model: keras.Model | OnnxClassifier) -> int | None:
    """Outputs per image the model declares, where its first output is a fixed (N, k) batch."""
    if isinstance(model, OnnxClassifier):
        shape = model.session.get_outputs()[0].shape
    elif getattr(model, "outputs", None):
        shape = model.outputs[0].shape
    else:
        return None
    return shape[1] if len(shape) == 2 and isinstance(shape[1], int) else None


def weights_digest(model: keras.Model) -> str:
    """sha256 of a model's weight values: the version of a model that has no weight file."""
    digest = hashlib.sha256()
    for weights in model.get_weights():
        digest.update(np.ascontiguousarray(weights).tobytes())
    return digest.hexdigest()


class Predictor:
    """Runs one model on decoded images and applies the study-level rule.

    ``runtime="onnx"`` runs the forward pass in ONNX Runtime (see ``inference.onnx_runtime``);
    when ORT cannot serve the model, the predictor says why in the log and uses Keras. The
    ``runtime`` attribute and every ``StudyPrediction`` tell which engine computed the result.
    A model installed as an ONNX file (``OnnxClassifier``) is always served by ORT, without
    heat maps. Images are preprocessed to the model's own input size.
    """

    def __init__(
        self,
        loaded: LoadedModel | keras.Model,
        *,
        batch_size: int = 16,
        runtime: str = RUNTIME_KERAS,
        onnx_dir: Path | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
        if isinstance(loaded, keras.Model):
            loaded = LoadedModel(spec=spec_for_plain_model(model=loaded), model=loaded, version=UNVERSIONED)
        self.loaded = loaded
        self.batch_size = batch_size
        self.profile = get_profile(loaded.spec.preprocessing)
        self.input_size = self.profile.check_size(model_input_size(loaded.model))
        width = _output_width(loaded.model)
        if width is not None:  # a manifest that misreads the outputs fails here, before any image
            loaded.spec.abnormal_probabilities(np.zeros((1, width)))
        if isinstance(loaded.model, OnnxClassifier):
            self.heatmaps_available, self.split, self._call = False, None, None
            self.onnx_model, self.runtime = loaded.model, RUNTIME_ONNX
            return
        # Cut at the Grad-CAM layer where possible: the forward pass then also returns the feature
        # maps, and heat maps cost only a pass back through the head (inference.gradcam).
        self.split = feature_split(loaded.model)
        # A model with no 4-D layer (a wrapped SavedModel graph, an MLP) has nothing to map.
        self.heatmaps_available = has_gradcam_layer(loaded.model)
        self._network = self.split.features_model if self.split is not None else loaded.model
        self._call = compiled_call(self._network)
        self.onnx_model = self._load_onnx(onnx_dir=onnx_dir) if runtime == RUNTIME_ONNX else None
        self.runtime = RUNTIME_ONNX if self.onnx_model is not None else RUNTIME_KERAS

    def _load_onnx(self, *, onnx_dir: Path | None):
        model, version = self.loaded.model, self.loaded.version
        version = weights_digest(model) if version == UNVERSIONED else version
        try:
            return load_onnx_model(
                model=self._network,
                # The cut network has two outputs: its file is not the plain model's.
                version=f"{version}-gradcam" if self.split is not None else version,
                reference=self._keras_forward,
                cache_dir=onnx_dir,
            )
        except OnnxRuntimeError as exc:
            logger.warning("Using Keras for %s: %s", self.loaded.spec.name or model.name, exc)
            return None

    def _keras_forward(self, batch: np.ndarray) -> list[np.ndarray]:
        results = self._call(tf.constant(batch))
        return [
            np.asarray(result) for result in (results if isinstance(results, list | tuple) else [results])
        ]

    def _forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The model's outputs for a batch, and the Grad-CAM layer's feature maps where it is cut."""
        results = self.onnx_model(batch) if self.onnx_model is not None else self._keras_forward(batch)
        if self.split is None:
            return results[0], None
        feature_maps, outputs = results
        return outputs, feature_maps

    def preprocess(self, images: Sequence[DecodedImage]) -> np.ndarray:
        """The model's input batch for these images, by the model's preprocessing profile."""
        return build_batch(images=images, profile=self.profile, size=self.input_size)

    def abnormal_probabilities(self, batch: np.ndarray) -> np.ndarray:
        """P(abnormal) for each row of a preprocessed batch, in chunks of ``batch_size``."""
        return self.run(batch, heatmaps=False).probabilities

    def run(self, batch: np.ndarray, *, heatmaps: bool) -> BatchResult:
        """P(abnormal) for each row of a preprocessed batch and, if asked, its Grad-CAM heat map.

        A heat map is an aid, not the result: when Grad-CAM fails, the probabilities still come
        back, with ``heatmaps`` None, and the failure is logged. A model without heat maps
        (``heatmaps_available`` False) always gives None.
        """
        heatmaps = heatmaps and self.heatmaps_available
        probabilities = np.empty(len(batch), dtype=np.float64)
        feature_chunks: list[np.ndarray] = []
        pooled_chunks: list[np.ndarray] = []
        for start in range(0, len(batch), self.batch_size):
            chunk = batch[start : start + self.batch_size]
            padded = np.zeros((_padded_size(len(chunk), self.batch_size), *chunk.shape[1:]), np.float32)
            padded[: len(chunk)] = chunk
            outputs, feature_maps = self._forward(padded)
            probabilities[start : start + len(chunk)] = self.loaded.spec.abnormal_probabilities(
                outputs[: len(chunk)]
            )
            if feature_maps is not None:
                pooled_chunks.append(pooled_features(feature_maps[: len(chunk)]))
            if heatmaps and feature_maps is not None:
                feature_chunks.append(feature_maps[: len(chunk)])
        return BatchResult(
            probabilities=probabilities,
            heatmaps=self._heatmaps(batch=batch, feature_chunks=feature_chunks) if heatmaps else None,
            features=np.concatenate(pooled_chunks) if pooled_chunks and len(batch) else None,
        )

    def pooled_features(self, images: Sequence[DecodedImage]) -> np.ndarray | None:
        """The pooled Grad-CAM-layer features (N, 2C) of images, or None for a model that gives none."""
        return self.run(self.preprocess(images), heatmaps=False).features

    def _heatmaps(self, *, batch: np.ndarray, feature_chunks: list[np.ndarray]) -> np.ndarray | None:
        target = {"class_index": self.loaded.spec.abnormal_index, "sign": self.loaded.spec.abnormal_sign}
        try:
            if self.split is None:  # not cut: a grad model runs the whole network again
                return gradcam_heatmaps(self.loaded.model, batch, **target)
            return np.concatenate([cams_from_features(self.split, maps, **target) for maps in feature_chunks])
        except Exception:  # Grad-CAM on an unusual model can fail in many ways; the result stands
            logger.exception(
                "Grad-CAM failed for %s; predictions stand without heat maps", self.loaded.spec.name
            )
            return None

    def predict(self, images: Sequence[DecodedImage]) -> StudyPrediction:
        """Predict one study: per-image P(abnormal), their mean, and the tier by threshold and band."""
        if not images:
            raise ValueError("a study prediction needs at least one image")
        return self.predict_studies([images])[0]

    def predict_studies(self, studies: Sequence[Sequence[DecodedImage]]) -> list[StudyPrediction]:
        """Predict several studies with one model, batching images across studies."""
        if any(not images for images in studies):
            raise ValueError("every study needs at least one image")
        all_images = [image for images in studies for image in images]
        started = time.perf_counter()
        batch = self.preprocess(all_images)
        preprocessed = time.perf_counter()
        probabilities = self.abnormal_probabilities(batch)
        finished = time.perf_counter()
        # Timings are shared out by image count, so per-study figures add up to the whole run.
        preprocess_ms_per_image = (preprocessed - started) * 1000 / len(all_images)
        inference_ms_per_image = (finished - preprocessed) * 1000 / len(all_images)
        predictions = []
        start = 0
        for images in studies:
            study_probabilities = probabilities[start : start + len(images)]
            start += len(images)
            predictions.append(
                self._study(
                    probabilities=study_probabilities,
                    preprocess_ms=preprocess_ms_per_image * len(images),
                    inference_ms=inference_ms_per_image * len(images),
                )
            )
        return predictions

    def _study(
        self, *, probabilities: np.ndarray, preprocess_ms: float, inference_ms: float
    ) -> StudyPrediction:
        spec = self.loaded.spec
        mean = float(np.mean(probabilities))
        return StudyPrediction(
            images=[
                ImagePrediction(abnormal_probability=float(p), label=spec.label_for(float(p)))
                for p in probabilities
            ],
            abnormal_probability=mean,
            label=spec.label_for(mean),
            threshold=spec.threshold,
            model_name=spec.name,
            model_version=self.loaded.version,
            demo=spec.demo,
            preprocessing=spec.preprocessing,
            preprocess_ms=preprocess_ms,
            inference_ms=inference_ms,
            runtime=self.runtime,
            heatmaps_available=self.heatmaps_available,
            indeterminate=spec.indeterminate,
        )
