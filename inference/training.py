"""The seed's training recipe, reproduced on Keras 3: model, augmentation, class weights, fit loop.

Recipe: InceptionResNetV2 (no top) → Flatten → Dense 256 ReLU → Dropout 0.5 → Dense 2 softmax,
RMSprop (learning rate 1e-4), categorical cross-entropy, class weights balancing abnormal and
normal images, and random flips / brightness / contrast / gamma / shift-scale-rotate.
Output index 0 is P(abnormal), as in the seed's files, so a trained model is registered with
``labels = ["abnormal", "normal"]``.

Images go through the same preprocessing profile as at inference: ``seed`` by default (so the
model sees values in [0, 1/255], as the seed's did), or ``imagenet-v1`` ([-1, 1], what ImageNet
weights expect); augmentation works on the image brought back to [0, 1] first. A model trained
at another ``image_size`` still takes the profile's 224x224 input and resizes inside the model,
so the registry and the predictor need nothing special.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import keras
import numpy as np
from scipy import ndimage

from inference.architectures import SEED_INPUT_SHAPE, build_seed_model
from inference.decoding import DecodeError, decode_image
from inference.preprocessing import get_profile

ARCHITECTURES = ("seed", "tiny")
PREPROCESSING = "seed"
# Profile output = unit image x scale + offset, with the unit image in [0, 1].
PROFILE_RANGES: dict[str, tuple[float, float]] = {"seed": (1 / 255, 0.0), "imagenet-v1": (2.0, -1.0)}
LABELS = ("abnormal", "normal")
IMAGENET_NOTOP_FILE = "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_NOTOP_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/inception_resnet_v2/" + IMAGENET_NOTOP_FILE
)


class TrainingError(RuntimeError):
    """Training cannot start or go on; the message says why and what to do."""


@dataclass(frozen=True)
class LabeledImage:
    path: Path
    abnormal: bool


@dataclass(frozen=True)
class AugmentationSettings:
    """Probabilities and ranges of the random transforms (albumentations-like defaults)."""

    horizontal_flip: float = 0.5
    vertical_flip: float = 0.5
    brightness: float = 0.1  # added, as a fraction of full scale
    contrast: float = 0.1  # multiplied around the image mean: 1 ± contrast
    gamma: tuple[float, float] = (0.8, 1.2)
    shift: float = 0.0625  # fraction of the side
    scale: float = 0.1
    rotate_degrees: float = 45.0
    shift_scale_rotate: float = 0.5


@dataclass
class TrainingResult:
    model: keras.Model
    history: dict[str, list[float]]
    skipped_images: list[tuple[Path, str]] = field(default_factory=list)


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded weights (``$KERAS_HOME/models``, else ``~/.keras/models``)."""
    import os

    keras_home = os.environ.get("KERAS_HOME")
    return Path(keras_home) / "models" if keras_home else Path.home() / ".keras" / "models"


def resolve_backbone_weights(*, weights: str, architecture: str) -> str | None:
    """Turn ``imagenet`` / ``none`` / a file path into what ``keras.applications`` accepts.

    ImageNet weights are never downloaded: they must already be in the Keras cache.
    """
    if weights.lower() == "none":
        return None
    if architecture != "seed":
        raise TrainingError(
            f"--weights {weights} needs the seed architecture; '{architecture}' trains from scratch"
        )
    if weights.lower() == "imagenet":
        cached = keras_cache_dir() / IMAGENET_NOTOP_FILE
        if not cached.is_file():
            raise TrainingError(
                "ImageNet weights for InceptionResNetV2 are not available and cannot be downloaded here. "
                f"Put {IMAGENET_NOTOP_FILE} (from {IMAGENET_NOTOP_URL}) into {cached.parent}/, "
                "pass its path with --weights FILE, or use --weights none."
            )
        return str(cached)
    path = Path(weights)
    if not path.is_file():
        raise TrainingError(
            f"weights file {path} does not exist (use imagenet, none or a path to a .h5 file)"
        )
    return str(path)


def _tiny_backbone(image_size: int, preprocessing: str) -> keras.Model:
    # A few strided convolutions: trains on the synthetic test tree in seconds on a CPU. Functional,
    # like InceptionResNetV2, so both classifiers share one structure (Grad-CAM relies on it).
    scale, offset = PROFILE_RANGES[preprocessing]
    inputs = keras.Input(shape=(image_size, image_size, 3))
    # Back to [0, 1]: the seed profile's [0, 1/255] would starve a small net trained from scratch.
    x = keras.layers.Rescaling(1 / scale, offset=-offset / scale)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    outputs = keras.layers.MaxPooling2D(4)(x)
    return keras.Model(inputs, outputs, name="tiny_backbone")


def build_classifier(
    *,
    architecture: str = "seed",
    weights: str | None = None,
    image_size: int = 224,
    preprocessing: str = PREPROCESSING,
) -> keras.Model:
    """The seed classifier (or the tiny test one), compiled with the seed's optimizer and loss.

    Both are a Sequential of [nested backbone, Flatten, Dense 256, Dropout, Dense 2], as the seed's
    files are. The input is always the profile's 224x224x3; another ``image_size`` is resized first.
    """
    if architecture not in ARCHITECTURES:
        raise TrainingError(
            f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}"
        )
    if architecture == "seed" and image_size < 75:
        raise TrainingError("InceptionResNetV2 needs --image-size of at least 75")
    size_shape = (image_size, image_size, 3)
    if architecture == "seed" and size_shape == SEED_INPUT_SHAPE:
        model = build_seed_model(weights=weights)
    else:
        if architecture == "seed":
            base = keras.applications.InceptionResNetV2(
                include_top=False, weights=weights, input_shape=size_shape
            )
        else:
            base = _tiny_backbone(image_size, preprocessing)
        resizing = [] if size_shape == SEED_INPUT_SHAPE else [keras.layers.Resizing(image_size, image_size)]
        model = keras.Sequential(
            [
                keras.Input(shape=SEED_INPUT_SHAPE),
                *resizing,
                base,
                keras.layers.Flatten(),
                keras.layers.Dense(256, activation="relu"),
                keras.layers.Dropout(0.5),
                keras.layers.Dense(len(LABELS), activation="softmax"),
            ],
            name=f"{architecture}_classifier_{image_size}",
        )
    model.compile(
        optimizer=keras.optimizers.RMSprop(learning_rate=1e-4),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def class_weights(*, labels: Sequence[bool]) -> dict[int, float]:
    """Balanced weights per output index (0 = abnormal, 1 = normal): total / (2 x class count)."""
    abnormal = sum(1 for label in labels if label)
    normal = len(labels) - abnormal
    if abnormal == 0 or normal == 0:
        raise TrainingError(
            f"training needs both classes; found {abnormal} abnormal and {normal} normal images"
        )
    total = len(labels)
    return {0: total / (2 * abnormal), 1: total / (2 * normal)}


def augment(image: np.ndarray, *, rng: np.random.Generator, settings: AugmentationSettings) -> np.ndarray:
    """Randomly transform one (H, W, 3) image with values in [0, 1]; returns float32 in [0, 1]."""
    out = image.astype(np.float32, copy=True)
    if rng.random() < settings.horizontal_flip:
        out = out[:, ::-1]
    if rng.random() < settings.vertical_flip:
        out = out[::-1]
    if rng.random() < settings.shift_scale_rotate:
        out = _shift_scale_rotate(out, rng=rng, settings=settings)
    out = out + rng.uniform(-settings.brightness, settings.brightness)
    factor = rng.uniform(1 - settings.contrast, 1 + settings.contrast)
    out = (out - out.mean()) * factor + out.mean()
    out = np.clip(out, 0.0, 1.0) ** rng.uniform(*settings.gamma)
    return np.ascontiguousarray(out, dtype=np.float32)


def _shift_scale_rotate(
    image: np.ndarray, *, rng: np.random.Generator, settings: AugmentationSettings
) -> np.ndarray:
    height, width = image.shape[:2]
    angle = math.radians(rng.uniform(-settings.rotate_degrees, settings.rotate_degrees))
    scale = rng.uniform(1 - settings.scale, 1 + settings.scale)
    shift = rng.uniform(-settings.shift, settings.shift, size=2) * (height, width)
    centre = np.array([(height - 1) / 2, (width - 1) / 2])
    # affine_transform maps output coordinates to input ones: the inverse rotation and scale.
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    matrix = np.array([[cos, -sin], [sin, cos]])
    offset = centre - matrix @ (centre + shift)
    channels = [
        ndimage.affine_transform(image[..., c], matrix, offset=offset, order=1, mode="reflect")
        for c in range(image.shape[2])
    ]
    return np.stack(channels, axis=-1)


class MuraSequence(keras.utils.PyDataset):
    """Batches of (seed-preprocessed, optionally augmented image, one-hot label, class weight)."""

    def __init__(
        self,
        items: Sequence[LabeledImage],
        *,
        batch_size: int,
        weights: dict[int, float] | None,
        augmentation: AugmentationSettings | None,
        seed: int,
        preprocessing: str = PREPROCESSING,
    ) -> None:
        super().__init__()
        self.items = list(items)
        self.batch_size = batch_size
        self.weights = weights
        self.augmentation = augmentation
        self.rng = np.random.default_rng(seed)
        self.profile = get_profile(preprocessing)
        self.scale, self.offset = PROFILE_RANGES[preprocessing]
        self.order = np.arange(len(self.items))
        self.skipped: dict[Path, str] = {}
        if augmentation is not None:
            self.rng.shuffle(self.order)

    def __len__(self) -> int:
        return math.ceil(len(self.items) / self.batch_size)

    def on_epoch_end(self) -> None:
        if self.augmentation is not None:
            self.rng.shuffle(self.order)

    def __getitem__(self, index: int):
        chosen = [self.items[i] for i in self.order[index * self.batch_size : (index + 1) * self.batch_size]]
        images, targets, sample_weights = [], [], []
        for item in chosen:
            try:
                decoded = decode_image(item.path.read_bytes())
            except (OSError, DecodeError) as error:
                # One unreadable file must not end hours of training: leave it out and report it.
                self.skipped[item.path] = str(error)
                continue
            array = self.profile(decoded)
            if self.augmentation is not None:
                unit = (array - self.offset) / self.scale
                array = augment(unit, rng=self.rng, settings=self.augmentation) * self.scale + self.offset
            images.append(array)
            class_index = 0 if item.abnormal else 1
            targets.append(np.eye(len(LABELS), dtype=np.float32)[class_index])
            sample_weights.append(self.weights[class_index] if self.weights else 1.0)
        if not images:
            raise TrainingError(f"no image of batch {index} could be decoded, e.g. {chosen[0].path}")
        batch = (np.stack(images).astype(np.float32), np.stack(targets))
        if self.weights is None:
            return batch
        return (*batch, np.asarray(sample_weights, dtype=np.float32))


class ProgressBar(keras.callbacks.Callback):
    """A one-line progress bar per epoch written to ``stream`` (redrawn in place on a terminal)."""

    def __init__(self, stream: TextIO, *, epochs: int, steps: int, width: int = 30) -> None:
        super().__init__()
        self.stream = stream
        self.epochs = epochs
        self.steps = steps
        self.width = width
        self.interactive = bool(getattr(stream, "isatty", lambda: False)())
        self.epoch = 0
        self.started = 0.0

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.epoch = epoch + 1
        self.started = time.monotonic()

    def _line(self, step: int, logs: dict | None) -> str:
        done = int(self.width * step / self.steps)
        bar = "=" * done + (">" if done < self.width else "") + " " * max(self.width - done - 1, 0)
        elapsed = time.monotonic() - self.started
        eta = elapsed / step * (self.steps - step) if step else 0.0
        figures = " ".join(f"{key} {float(value):.4f}" for key, value in (logs or {}).items())
        timing = f"ETA {eta:4.0f}s" if step < self.steps else f"{elapsed:4.0f}s"
        return f"epoch {self.epoch}/{self.epochs} [{bar}] {step}/{self.steps} {timing} {figures}".rstrip()

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        if self.interactive:
            self.stream.write("\r" + self._line(batch + 1, logs))
            self.stream.flush()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        self.stream.write(("\r" if self.interactive else "") + self._line(self.steps, logs) + "\n")
        self.stream.flush()


def train_classifier(
    *,
    train_items: Sequence[LabeledImage],
    valid_items: Sequence[LabeledImage] = (),
    architecture: str = "seed",
    weights: str = "none",
    epochs: int = 10,
    batch_size: int = 8,
    image_size: int = 224,
    seed: int = 0,
    preprocessing: str = PREPROCESSING,
    augmentation: AugmentationSettings | None = None,
    progress: TextIO | None = None,
) -> TrainingResult:
    """Train a classifier with the seed's recipe and return it with its per-epoch history."""
    if not train_items:
        raise TrainingError("no training images")
    if preprocessing not in PROFILE_RANGES:
        raise TrainingError(
            f"unknown preprocessing {preprocessing!r}; choose one of {', '.join(PROFILE_RANGES)}"
        )
    weights_file = resolve_backbone_weights(weights=weights, architecture=architecture)
    keras.utils.set_random_seed(seed)
    model = build_classifier(
        architecture=architecture, weights=weights_file, image_size=image_size, preprocessing=preprocessing
    )
    train_data = MuraSequence(
        train_items,
        batch_size=batch_size,
        weights=class_weights(labels=[item.abnormal for item in train_items]),
        augmentation=augmentation or AugmentationSettings(),
        seed=seed,
        preprocessing=preprocessing,
    )
    valid_data = (
        MuraSequence(
            valid_items,
            batch_size=batch_size,
            weights=None,
            augmentation=None,
            seed=seed,
            preprocessing=preprocessing,
        )
        if valid_items
        else None
    )
    callbacks = [ProgressBar(progress, epochs=epochs, steps=len(train_data))] if progress is not None else []
    history = model.fit(train_data, validation_data=valid_data, epochs=epochs, callbacks=callbacks, verbose=0)
    skipped = {**train_data.skipped, **(valid_data.skipped if valid_data else {})}
    return TrainingResult(
        model=model,
        history={key: [float(v) for v in values] for key, values in history.history.items()},
        skipped_images=sorted(skipped.items()),
    )


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_entry(
    *, body_part: str, file_name: str, sha256: str, preprocessing: str = PREPROCESSING, threshold: float = 0.5
) -> str:
    """The ``models.toml`` table that registers a trained model file."""
    labels = ", ".join(f'"{label}"' for label in LABELS)
    return (
        f"[{body_part}]\n"
        f'file = "{file_name}"\n'
        f'preprocessing = "{preprocessing}"\n'
        f"labels = [{labels}]\n"
        f"threshold = {threshold}\n"
        f'sha256 = "{sha256}"\n'
        "demo = false\n"
    )
