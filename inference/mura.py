"""Reading the MURA dataset layout: split CSVs, study labels and image files.

MURA-v1.1 ships ``{split}_image_paths.csv`` (one image path per line) and
``{split}_labeled_studies.csv`` (``study_dir/,label`` with 1 = abnormal). Paths in both start
with the dataset folder name (``MURA-v1.1/``); they are resolved against the folder that holds
the CSVs, so a renamed copy of the dataset still reads.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from inference.body_parts import BODY_PARTS

MURA_BODY_PARTS = BODY_PARTS
SPLITS = ("train", "valid")


class MuraFormatError(ValueError):
    """The directory does not hold a readable MURA split."""


@dataclass(frozen=True)
class MuraStudy:
    """One study of a MURA split with its label and image files."""

    key: (
        str  # the study path as written in the CSV, e.g. "MURA-v1.1/valid/XR_WRIST/patient1/study1_positive/"
    )
    body_part: str
    patient: str
    abnormal: bool
    image_paths: tuple[Path, ...]


def find_dataset_dir(*, mura_root: Path, split: str) -> Path:
    """Return the folder holding ``{split}_image_paths.csv``: ``mura_root`` or its ``MURA-v1.1``."""
    candidates = [mura_root, mura_root / "MURA-v1.1", *sorted(mura_root.glob("MURA-v*"))]
    for candidate in candidates:
        if (candidate / f"{split}_image_paths.csv").is_file():
            return candidate
    raise MuraFormatError(
        f"{mura_root} is not a MURA directory: no {split}_image_paths.csv in it or in its MURA-v1.1/ folder"
    )


def _resolve(dataset_dir: Path, csv_path: str) -> Path:
    # "MURA-v1.1/valid/XR_WRIST/..." -> <dataset_dir>/valid/XR_WRIST/...
    parts = PurePosixPath(csv_path.strip()).parts
    if len(parts) < 2:
        raise MuraFormatError(f"unexpected path in MURA CSV: {csv_path!r}")
    return dataset_dir.joinpath(*parts[1:])


def _study_key(image_csv_path: str) -> str:
    return str(PurePosixPath(image_csv_path.strip()).parent) + "/"


def _read_labels(path: Path) -> dict[str, bool]:
    labels: dict[str, bool] = {}
    with path.open(newline="") as handle:
        for line_number, row in enumerate(csv.reader(handle), start=1):
            if not row:
                continue
            if len(row) != 2 or row[1].strip() not in {"0", "1"}:
                raise MuraFormatError(
                    f"{path.name} line {line_number}: expected 'study_dir/,0|1', got {row!r}"
                )
            key = row[0].strip()
            labels[key if key.endswith("/") else key + "/"] = row[1].strip() == "1"
    return labels


def read_split(*, mura_root: Path, split: str, body_part: str | None = None) -> list[MuraStudy]:
    """Read one split's studies (optionally one body part), checking that every image file exists."""
    if split not in SPLITS:
        raise MuraFormatError(f"unknown split {split!r}; MURA has {', '.join(SPLITS)}")
    if body_part is not None and body_part not in MURA_BODY_PARTS:
        raise MuraFormatError(f"unknown body part {body_part!r}; MURA has {', '.join(MURA_BODY_PARTS)}")
    dataset_dir = find_dataset_dir(mura_root=mura_root, split=split)
    labels_csv = dataset_dir / f"{split}_labeled_studies.csv"
    if not labels_csv.is_file():
        raise MuraFormatError(f"{labels_csv} is missing")
    labels = _read_labels(labels_csv)

    images_by_study: dict[str, list[Path]] = defaultdict(list)
    missing: list[Path] = []
    with (dataset_dir / f"{split}_image_paths.csv").open(newline="") as handle:
        for row in csv.reader(handle):
            if not row or not row[0].strip():
                continue
            csv_path = row[0].strip()
            parts = PurePosixPath(csv_path).parts
            # <dataset>/<split>/<XR_PART>/<patient>/<study>/<image>
            if len(parts) != 6:
                raise MuraFormatError(f"unexpected image path in MURA CSV: {csv_path!r}")
            if body_part is not None and parts[2] != body_part:
                continue
            image_path = _resolve(dataset_dir, csv_path)
            if not image_path.is_file():
                missing.append(image_path)
            images_by_study[_study_key(csv_path)].append(image_path)
    if missing:
        raise MuraFormatError(
            f"{len(missing)} image file(s) listed in the CSV are missing, e.g. {missing[0]}"
        )

    studies = []
    for key, paths in images_by_study.items():
        if key not in labels:
            raise MuraFormatError(f"study {key} has images but no row in {labels_csv.name}")
        parts = PurePosixPath(key).parts
        studies.append(
            MuraStudy(
                key=key, body_part=parts[2], patient=parts[3], abnormal=labels[key], image_paths=tuple(paths)
            )
        )
    return studies


def body_parts_in(studies: list[MuraStudy]) -> list[str]:
    """The body parts present in ``studies``, in MURA's order."""
    present = {study.body_part for study in studies}
    return [part for part in MURA_BODY_PARTS if part in present]
