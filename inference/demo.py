"""Demo models: small CNNs trained on synthetic radiograph-like images, so the app runs end to end
where no real weights are installed. They are marked ``demo = true`` in their ``models.toml`` and
every result they produce says so. They know nothing about real radiographs.

A synthetic image is a dark, noisy field with bright bone-like bars laid out per body part; an
abnormal image carries one sign on a bone: a dark fracture gap across it, or a bright round lesion.
Images go through the real ``seed`` preprocessing profile (values in [0, 1/255]), so the models start
with ``Rescaling(255)`` (offset -0.25, to centre them).
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
DEMO_THRESHOLD = 0.5
# Results with P(abnormal) in [0.35, 0.65) are "indeterminate": the demo models make no call there.
DEMO_INDETERMINATE = (0.35, 0.65)
# Small synthetic images keep generation cheap; the seed profile upsamples them to 300 anyway.
IMAGE_SIZE = 112
LAST_CONV = "last_conv"


@dataclass(frozen=True)
class BoneLayout:
    """How a body part's bones look in the synthetic images (sizes in pixels of a 160-pixel image)."""

    bones: int
    width: tuple[float, float]
    length: tuple[float, float]
    spread: float  # radians between neighbouring bones


LAYOUTS: dict[str, BoneLayout] = {
    "XR_ELBOW": BoneLayout(bones=2, width=(14, 20), length=(70, 100), spread=0.9),
    "XR_FINGER": BoneLayout(bones=3, width=(9, 12), length=(35, 50), spread=0.1),
    "XR_FOREARM": BoneLayout(bones=2, width=(11, 15), length=(95, 120), spread=0.08),
    "XR_HAND": BoneLayout(bones=5, width=(8, 11), length=(45, 70), spread=0.22),
    "XR_HUMERUS": BoneLayout(bones=1, width=(20, 26), length=(100, 125), spread=0.0),
    "XR_SHOULDER": BoneLayout(bones=2, width=(16, 24), length=(60, 90), spread=1.3),
    "XR_WRIST": BoneLayout(bones=4, width=(10, 14), length=(35, 55), spread=0.35),
}
_SCALE = IMAGE_SIZE / 160


@dataclass(frozen=True)
class DemoResult:
    body_part: str
    path: Path
    held_out_accuracy: float
    seconds: float
    size_bytes: int
    # The threshold of the OOD reference written beside the model (inference.ood); None: none written.
    ood_threshold: float | None = None


def synthetic_radiographs(*, body_part: str, abnormal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Synthetic 8-bit gray radiograph-like images, (N, IMAGE_SIZE, IMAGE_SIZE), one per flag.

    A dark noisy field with a soft-tissue glow, bright bars with a brighter cortex laid out per body
    part; an abnormal image carries one sign on one bone: a dark fracture line across it, or a bright
    round lesion. All images are drawn at once (numpy broadcasting over the batch).
    """
    layout = LAYOUTS[body_part]
    count = len(abnormal)
    grid = np.arange(IMAGE_SIZE, dtype=np.float32)
    rows, cols = grid[None, :, None], grid[None, None, :]

    def column(values: np.ndarray) -> np.ndarray:
        return values.astype(np.float32)[:, None, None]

    centre = IMAGE_SIZE / 2 + rng.uniform(-6, 6, size=(count, 2)) * _SCALE
    glow = np.exp(
        -((rows - column(centre[:, 0])) ** 2 + (cols - column(centre[:, 1])) ** 2)
        / (2 * (45.0 * _SCALE) ** 2)
    )
    images = 0.12 + 0.1 * glow
    base_angle = rng.uniform(0, np.pi, size=count)
    sick_bone = rng.integers(layout.bones, size=count)
    fracture = rng.random(count) < 0.5
    for index in range(layout.bones):
        angle = base_angle + (index - (layout.bones - 1) / 2) * layout.spread
        offset = (index - (layout.bones - 1) / 2) * rng.uniform(12, 18, size=count) * _SCALE
        bone_row = centre[:, 0] + offset * np.cos(angle)
        bone_col = centre[:, 1] - offset * np.sin(angle)
        length = rng.uniform(*layout.length, size=count) * _SCALE
        width = rng.uniform(*layout.width, size=count) * _SCALE
        sin, cos = column(np.sin(angle)), column(np.cos(angle))
        along = (rows - column(bone_row)) * sin + (cols - column(bone_col)) * cos
        across = -(rows - column(bone_row)) * cos + (cols - column(bone_col)) * sin
        half_width, half_length = column(width / 2), column(length / 2)
        inside = np.clip(half_width - np.abs(across) + 0.5, 0, 1) * np.clip(
            half_length - np.abs(along) + 0.5, 0, 1
        )
        # Cortex brighter than marrow, as on a radiograph.
        mask = inside * (0.8 + 0.2 * np.clip(np.abs(across) / half_width, 0, 1))
        density = column(rng.uniform(0.1, 0.2, size=count))
        images = np.maximum(images, 0.45 * mask + density * (mask > 0))
        sick = (abnormal & (sick_bone == index))[:, None, None]
        if not sick.any():
            continue
        position = column(rng.uniform(-0.3, 0.3, size=count) * length)
        bone = mask > 0.2
        # Fracture: a dark line across the bone, about 4 px wide, a little oblique.
        tilt = column(rng.uniform(-0.4, 0.4, size=count))
        gap = np.clip(2.5 - np.abs(along - position - tilt * across), 0, 1) * bone
        # Lesion: a bright round spot inside the bone.
        spot_row = column(bone_row) + position * sin
        spot_col = column(bone_col) + position * cos
        radius = np.maximum(3.0, column(width) / 2.5)
        blob = np.exp(-((rows - spot_row) ** 2 + (cols - spot_col) ** 2) / (2 * radius**2)) * bone
        is_fracture = fracture[:, None, None]
        images = np.where(sick & is_fracture, images * (1 - 0.9 * gap), images)
        images = np.where(sick & ~is_fracture, images + 0.6 * blob, images)
    images = images + rng.normal(0, 0.03, size=images.shape).astype(np.float32)
    return np.rint(np.clip(images, 0, 1) * 255).astype(np.uint8)


def synthetic_radiograph(*, body_part: str, abnormal: bool, rng: np.random.Generator) -> np.ndarray:
    """One synthetic 8-bit gray radiograph-like image (IMAGE_SIZE x IMAGE_SIZE)."""
    return synthetic_radiographs(body_part=body_part, abnormal=np.array([abnormal]), rng=rng)[0]


def synthetic_dataset(
    *, body_part: str, count: int, rng: np.random.Generator
) -> tuple[list[DecodedImage], np.ndarray]:
    """``count`` decoded synthetic images, half abnormal, and their class indices (0 = abnormal)."""
    abnormal = rng.permutation(np.arange(count) < count // 2)
    pixels = synthetic_radiographs(body_part=body_part, abnormal=abnormal, rng=rng)
    images = [
        DecodedImage(pixels=image, format="png", width=IMAGE_SIZE, height=IMAGE_SIZE, bit_depth=8)
        for image in pixels
    ]
    return images, np.where(abnormal, DEMO_LABELS.index("abnormal"), DEMO_LABELS.index("normal"))


def build_demo_model(*, name: str) -> keras.Model:
    """A small CNN on seed-preprocessed input; its last conv layer is Grad-CAM's target."""
    return keras.Sequential(
        [
            keras.Input(shape=(224, 224, 3)),
            # Seed inputs lie in [0, 1/255]; centring them round zero lets training find the signs in
            # a few epochs instead of sitting at chance first.
            keras.layers.Rescaling(255.0, offset=-0.25),
            # The synthetic images are upsampled ~2.7x by the seed profile: a quarter of the
            # resolution still resolves the signs and costs a sixteenth.
            keras.layers.AveragePooling2D(4),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", name=LAST_CONV),
            # A sign is small and local: its strongest response anywhere decides.
            keras.layers.GlobalMaxPooling2D(),
            keras.layers.Dense(len(DEMO_LABELS), activation="softmax"),
        ],
        name=name,
    )


def train_demo_model(
    *, body_part: str, seed: int, train_count: int = 320, test_count: int = 128, epochs: int = 6
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
        optimizer=keras.optimizers.Adam(5e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    model.fit(x_train, train_labels, batch_size=32, epochs=epochs, verbose=0)
    predicted = np.argmax(model.predict(x_test, batch_size=64, verbose=0), axis=1)
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
            f"threshold = {DEMO_THRESHOLD}\n"
            f"indeterminate = [{DEMO_INDETERMINATE[0]}, {DEMO_INDETERMINATE[1]}]\n"
            "demo = true\n"
        )
    return "".join(entries)


def build_demo_models(
    *,
    out_dir: Path,
    body_parts: tuple[str, ...] = BODY_PARTS,
    seed: int = 0,
    train_count: int = 320,
    epochs: int = 6,
    ood_reference_dir: Path | None = None,
) -> list[DemoResult]:
    """Train and save the demo models and their ``models.toml`` in ``out_dir``.

    Every file is written to a temporary name in ``out_dir`` and moved into place, the manifest
    last, so a reader never sees a half-written file and a rerun replaces a previous build. Each
    model's OOD reference (``ood/<sha256>.npz``) is fitted on ``ood_reference_dir`` (default: the
    shared upper-limb radiographs; none when they cannot be found).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    reference_images = _ood_reference_images(ood_reference_dir)
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
            ood_threshold = _write_ood_reference(
                model=model, body_part=body_part, path=final, out_dir=out_dir, images=reference_images
            )
            results.append(
                DemoResult(
                    body_part=body_part,
                    path=final,
                    held_out_accuracy=accuracy,
                    seconds=time.perf_counter() - started,
                    size_bytes=final.stat().st_size,
                    ood_threshold=ood_threshold,
                )
            )
        staged_manifest = staging_dir / MANIFEST_NAME
        staged_manifest.write_text(manifest_text(body_parts=list(body_parts)), encoding="utf-8")
        os.replace(staged_manifest, out_dir / MANIFEST_NAME)
    return results


def _ood_reference_images(directory: Path | None) -> tuple[list[DecodedImage], list[str], str] | None:
    """The reference images (decoded once for every body part), their names and their folder."""
    from inference.ood_samples import decode_reference, upper_limb_paths
    from inference.shared_data import SharedDataNotFound, locate_shared_data

    if directory is None:
        try:
            directory = locate_shared_data()
        except SharedDataNotFound:
            return None  # the demo models then say "no OOD reference" with every result
        paths = upper_limb_paths(directory)
    else:
        from inference.ood_samples import image_files

        paths = image_files(directory)
    images, names, _ = decode_reference(paths, root=directory)
    return (images, names, str(directory)) if len(images) >= 3 else None


def _write_ood_reference(
    *, model: keras.Model, body_part: str, path: Path, out_dir: Path, images: tuple | None
) -> float | None:
    import dataclasses

    from inference.ood import fit_model_reference, write_reference
    from inference.predictor import spec_for_plain_model
    from inference.registry import LoadedModel, file_sha256

    if images is None:
        return None
    decoded, names, source = images
    spec = dataclasses.replace(
        spec_for_plain_model(model=model, preprocessing=DEMO_PREPROCESSING),
        body_part=body_part,
        name=f"demo-{body_part.removeprefix('XR_').lower()}",
    )
    loaded = LoadedModel(spec=spec, model=model, version=file_sha256(path=path))
    reference = fit_model_reference(loaded=loaded, images=decoded, names=names, source=source)
    write_reference(model_dir=out_dir, reference=reference)
    return reference.threshold
