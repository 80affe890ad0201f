"""Builders of tiny synthetic trees in the MURA-v1.1 layout, for the train/evaluate tests.

The layout and CSVs mirror the real dataset exactly:
``MURA-v1.1/{split}/XR_*/patientN/studyK_{positive,negative}/imageI.png`` with
``{split}_image_paths.csv`` and ``{split}_labeled_studies.csv`` whose paths start with
``MURA-v1.1/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

DATASET = "MURA-v1.1"


@dataclass(frozen=True)
class SyntheticStudy:
    split: str
    body_part: str
    patient: int
    study: int
    abnormal: bool
    images: Sequence[np.ndarray]  # uint8 (H, W) grayscale pixel arrays

    @property
    def key(self) -> str:
        suffix = "positive" if self.abnormal else "negative"
        return (
            f"{DATASET}/{self.split}/{self.body_part}/patient{self.patient:05d}/study{self.study}_{suffix}/"
        )


def write_mura_tree(root: Path, studies: Sequence[SyntheticStudy]) -> Path:
    """Write ``studies`` under ``root/MURA-v1.1`` with the four CSVs; returns ``root``."""
    image_rows: dict[str, list[str]] = {}
    label_rows: dict[str, list[str]] = {}
    for study in studies:
        image_rows.setdefault(study.split, [])
        label_rows.setdefault(study.split, []).append(f"{study.key},{int(study.abnormal)}")
        for index, pixels in enumerate(study.images, start=1):
            relative = f"{study.key}image{index}.png"
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
            image_rows[study.split].append(relative)
    dataset_dir = root / DATASET
    dataset_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in image_rows.items():
        (dataset_dir / f"{split}_image_paths.csv").write_text("\n".join(rows) + "\n")
        (dataset_dir / f"{split}_labeled_studies.csv").write_text("\n".join(label_rows[split]) + "\n")
    return root


def learnable_image(*, abnormal: bool, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A noisy radiograph-like square; abnormal ones carry a bright block (the learnable sign)."""
    pixels = rng.normal(70, 12, size=(size, size)).clip(0, 255)
    if abnormal:
        corner = rng.integers(size // 4, size // 2, size=2)
        pixels[corner[0] : corner[0] + size // 3, corner[1] : corner[1] + size // 3] = 230
    return pixels.astype(np.uint8)


def learnable_studies(
    *,
    body_parts: Sequence[str] = ("XR_WRIST",),
    studies_per_label: int = 4,
    images_per_study: int = 2,
    size: int = 64,
    seed: int = 0,
) -> list[SyntheticStudy]:
    """Balanced train and valid studies per body part, each image carrying the sign or not."""
    rng = np.random.default_rng(seed)
    studies = []
    patient = 1
    for split in ("train", "valid"):
        for body_part in body_parts:
            for abnormal in (True, False):
                for _ in range(studies_per_label):
                    images = [
                        learnable_image(abnormal=abnormal, rng=rng, size=size)
                        for _ in range(images_per_study)
                    ]
                    studies.append(SyntheticStudy(split, body_part, patient, 1, abnormal, images))
                    patient += 1
    return studies


def uniform_image(value: int, *, size: int = 32) -> np.ndarray:
    """A flat image: its seed-preprocessed mean is exactly ``value / 255 / 255``."""
    return np.full((size, size), value, dtype=np.uint8)
