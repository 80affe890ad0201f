"""Demo models: small CNNs trained on synthetic radiograph-like images, so the app runs end to end
where no real weights are installed. They are marked ``demo = true`` in their ``models.toml`` and
every result they produce says so. They know nothing about real radiographs.

A synthetic image is a dark, noisy field with bright bone-like bars laid out per body part; an
abnormal image carries one sign on a bone: a dark fracture gap across it, or a bright round lesion.
Images go through the real ``seed`` preprocessing profile (values in [0, 1/255]), so the models start
with ``Rescaling(255)``.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from inference.decoding import DecodedImage
from inference.preprocessing import build_batch
from inference.registry import BODY_PARTS, MANIFEST_NAME

DEMO_PREPROCESSING = "seed"
DEMO_LABELS = ("abnormal", "normal")  # output 0 = abnormal, as in the seed's files
IMAGE_SIZE = 160
# The seed profile keeps the centre 224/300 of the image; bones and signs stay inside it.
_CENTRE_LOW, _CENTRE_HIGH = 0.2 * IMAGE_SIZE, 0.8 * IMAGE_SIZE


@dataclass(frozen=True)
class BoneLayout:
    """How a body part's bones look in the synthetic images."""

    bones: int
    width: tuple[float, float]  # pixels
    length: tuple[float, float]  # pixels
    spread: float  # radians between neighbouring bones


LAYOUTS: dict[str, BoneLayout] = {
    "XR_ELBOW": BoneLayout(bones=2, width=(14, 20), length=(70, 100), spread=0.9),
    "XR_FINGER": BoneLayout(bones=3, width=(8, 11), length=(30, 45), spread=0.1),
    "XR_FOREARM": BoneLayout(bones=2, width=(10, 14), length=(95, 120), spread=0.08),
    "XR_HAND": BoneLayout(bones=5, width=(7, 10), length=(45, 70), spread=0.22),
    "XR_HUMERUS": BoneLayout(bones=1, width=(20, 26), length=(100, 125), spread=0.0),
    "XR_SHOULDER": BoneLayout(bones=2, width=(16, 24), length=(60, 90), spread=1.3),
    "XR_WRIST": BoneLayout(bones=4, width=(9, 14), length=(30, 55), spread=0.35),
}


@dataclass(frozen=True)
class DemoResult:
    body_part: str
    path: Path
    held_out_accuracy: float
    seconds: float
    size_bytes: int


def _bar_mask(
    rows: np.ndarray, cols: np.ndarray, *, centre: np.ndarray, angle: float, length: float, width: float
) -> tuple[np.ndarray, np.ndarray]:
    """Soft mask of a rotated bar, and each pixel's position along the bar (pixels from its centre)."""
    direction = np.array([np.sin(angle), np.cos(angle)])
    along = (rows - centre[0]) * direction[0] + (cols - centre[1]) * direction[1]
    across = -(rows - centre[0]) * direction[1] + (cols - centre[1]) * direction[0]
    inside = np.clip(width / 2 - np.abs(across) + 0.5, 0, 1) * np.clip(length / 2 - np.abs(along) + 0.5, 0, 1)
    # Cortex brighter than marrow, as on a radiograph.
    cortex = 0.8 + 0.2 * np.clip(np.abs(across) / (width / 2), 0, 1)
    return inside * cortex, along


def synthetic_radiograph(*, body_part: str, abnormal: bool, rng: np.random.Generator) -> np.ndarray:
    """One synthetic 8-bit gray radiograph-like image (IMAGE_SIZE x IMAGE_SIZE)."""
    layout = LAYOUTS[body_part]
    rows, cols = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)
    centre = np.array([IMAGE_SIZE / 2, IMAGE_SIZE / 2]) + rng.uniform(-8, 8, size=2)
    # Soft tissue: a faint broad glow round the bones, then noise.
    image = 0.12 + 0.1 * np.exp(-((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / (2 * 45.0**2))
    base_angle = rng.uniform(0, np.pi)
    bones = []
    for index in range(layout.bones):
        angle = base_angle + (index - (layout.bones - 1) / 2) * layout.spread
        offset = (index - (layout.bones - 1) / 2) * rng.uniform(12, 18)
        bone_centre = centre + offset * np.array([np.cos(angle), -np.sin(angle)])
        length = rng.uniform(*layout.length)
        width = rng.uniform(*layout.width)
        mask, along = _bar_mask(rows, cols, centre=bone_centre, angle=angle, length=length, width=width)
        image = np.maximum(image, 0.45 * mask + rng.uniform(0.1, 0.2) * (mask > 0))
        bones.append((mask, along, length, width, bone_centre, angle))
    if abnormal:
        mask, along, length, width, bone_centre, angle = bones[rng.integers(len(bones))]
        position = rng.uniform(-0.3, 0.3) * length
        if rng.random() < 0.5:
            # Fracture: a dark gap across the bone, a few pixels wide.
            gap = np.clip(3.0 - np.abs(along - position), 0, 1) * (mask > 0.2)
            image = image * (1 - 0.85 * gap)
        else:
            # Lesion: a bright round spot on the bone.
            spot = bone_centre + position * np.array([np.sin(angle), np.cos(angle)])
            radius = max(3.5, width / 3)
            blob = np.exp(-((rows - spot[0]) ** 2 + (cols - spot[1]) ** 2) / (2 * radius**2))
            image = image + 0.5 * blob * (mask > 0.2)
    image = image + rng.normal(0, 0.03, size=image.shape)
    return np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)


def synthetic_dataset(
    *, body_part: str, count: int, rng: np.random.Generator
) -> tuple[list[DecodedImage], np.ndarray]:
    """``count`` decoded synthetic images, half abnormal, and their class indices (0 = abnormal)."""
    abnormal = rng.permutation(np.arange(count) < count // 2)
    images = [
        DecodedImage(
            pixels=synthetic_radiograph(body_part=body_part, abnormal=bool(flag), rng=rng),
            format="png",
            width=IMAGE_SIZE,
            height=IMAGE_SIZE,
            bit_depth=8,
        )
        for flag in abnormal
    ]
    return images, np.where(abnormal, DEMO_LABELS.index("abnormal"), DEMO_LABELS.index("normal"))


def build_demo_model(*, name: str) -> keras.Model:
    """A small CNN on seed-preprocessed input; its last conv layer is Grad-CAM's target."""
    return keras.Sequential(
        [
            keras.Input(shape=(224, 224, 3)),
            keras.layers.Rescaling(255.0),  # seed inputs lie in [0, 1/255]
            # Halve the resolution first: the signs are several pixels wide, and it quarters the cost.
            keras.layers.AveragePooling2D(2),
            keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu"),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(24, 3, padding="same", activation="relu", name="last_conv"),
            keras.layers.GlobalMaxPooling2D(),
            keras.layers.Dense(len(DEMO_LABELS), activation="softmax"),
        ],
        name=name,
    )


def train_demo_model(
    *, body_part: str, seed: int, train_count: int = 256, test_count: int = 96, epochs: int = 8
) -> tuple[keras.Model, float]:
    """Train one body part's demo model; return it and its accuracy on held-out synthetic images."""
    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    train_images, train_labels = synthetic_dataset(body_part=body_part, count=train_count, rng=rng)
    test_images, test_labels = synthetic_dataset(body_part=body_part, count=test_count, rng=rng)
    x_train = build_batch(images=train_images, profile=DEMO_PREPROCESSING)
    x_test = build_batch(images=test_images, profile=DEMO_PREPROCESSING)
    model = build_demo_model(name=f"demo_{body_part.removeprefix('XR_').lower()}")
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    model.fit(x_train, train_labels, batch_size=32, epochs=epochs, verbose=0)
    predicted = np.argmax(model.predict_on_batch(x_test), axis=1)
    return model, float(np.mean(predicted == test_labels))


def manifest_text(*, body_parts: list[str]) -> str:
    """The ``models.toml`` of a demo model dir."""
    labels = ", ".join(f'"{label}"' for label in DEMO_LABELS)
    entries = [
        "# Generated by `python manage.py build_demo_models`: synthetic demo models, not for clinical use.\n"
    ]
    for body_part in body_parts:
        entries.append(
            f"\n[{body_part}]\n"
            f'file = "{body_part}.keras"\n'
            f'name = "demo-{body_part.removeprefix("XR_").lower()}"\n'
            f'preprocessing = "{DEMO_PREPROCESSING}"\n'
            f"labels = [{labels}]\n"
            "threshold = 0.5\n"
            "demo = true\n"
        )
    return "".join(entries)


def build_demo_models(
    *,
    out_dir: Path,
    body_parts: tuple[str, ...] = BODY_PARTS,
    seed: int = 0,
    train_count: int = 256,
    epochs: int = 8,
) -> list[DemoResult]:
    """Train and save the demo models and their ``models.toml`` in ``out_dir``.

    Every file is written to a temporary name in ``out_dir`` and moved into place, the manifest
    last, so a reader never sees a half-written file and a rerun replaces a previous build.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".building-") as staging:
        staging_dir = Path(staging)
        for offset, body_part in enumerate(body_parts):
            started = time.perf_counter()
            model, accuracy = train_demo_model(
                body_part=body_part, seed=seed + offset, train_count=train_count, epochs=epochs
            )
            staged = staging_dir / f"{body_part}.keras"
            model.save(staged)
            final = out_dir / staged.name
            os.replace(staged, final)
            results.append(
                DemoResult(
                    body_part=body_part,
                    path=final,
                    held_out_accuracy=accuracy,
                    seconds=time.perf_counter() - started,
                    size_bytes=final.stat().st_size,
                )
            )
        staged_manifest = staging_dir / MANIFEST_NAME
        staged_manifest.write_text(manifest_text(body_parts=list(body_parts)), encoding="utf-8")
        os.replace(staged_manifest, out_dir / MANIFEST_NAME)
    return results
