"""Reading MURA-layout directories: CSVs, labels, body-part filter, and clear errors."""

from pathlib import Path

import pytest

from inference.mura import MuraFormatError, body_parts_in, read_split
from tests.inference.mura_tree import SyntheticStudy, uniform_image, write_mura_tree


def _studies() -> list[SyntheticStudy]:
    return [
        SyntheticStudy("train", "XR_WRIST", 1, 1, True, [uniform_image(10), uniform_image(20)]),
        SyntheticStudy("train", "XR_WRIST", 2, 1, False, [uniform_image(30)]),
        SyntheticStudy("train", "XR_ELBOW", 3, 2, False, [uniform_image(40)]),
        SyntheticStudy("valid", "XR_WRIST", 11185, 1, True, [uniform_image(50)]),
    ]


@pytest.fixture
def mura_root(tmp_path: Path) -> Path:
    return write_mura_tree(tmp_path, _studies())


def test_csv_paths_use_the_real_mura_layout(mura_root: Path):
    labels = (mura_root / "MURA-v1.1" / "valid_labeled_studies.csv").read_text().splitlines()
    images = (mura_root / "MURA-v1.1" / "valid_image_paths.csv").read_text().splitlines()
    assert labels == ["MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive/,1"]
    assert images == ["MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive/image1.png"]


def test_read_split_groups_images_by_study_with_labels(mura_root: Path):
    studies = read_split(mura_root=mura_root, split="train")
    by_key = {study.key: study for study in studies}
    wrist = by_key["MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/"]
    assert wrist.abnormal is True
    assert wrist.body_part == "XR_WRIST"
    assert wrist.patient == "patient00001"
    assert [path.name for path in wrist.image_paths] == ["image1.png", "image2.png"]
    assert all(path.is_file() for path in wrist.image_paths)
    assert by_key["MURA-v1.1/train/XR_ELBOW/patient00003/study2_negative/"].abnormal is False
    assert body_parts_in(studies) == ["XR_ELBOW", "XR_WRIST"]


def test_body_part_filter(mura_root: Path):
    studies = read_split(mura_root=mura_root, split="train", body_part="XR_ELBOW")
    assert [study.body_part for study in studies] == ["XR_ELBOW"]


def test_dataset_folder_itself_is_accepted_as_root(mura_root: Path):
    studies = read_split(mura_root=mura_root / "MURA-v1.1", split="valid")
    assert len(studies) == 1 and studies[0].image_paths[0].is_file()


def test_missing_image_file_is_named(mura_root: Path):
    missing = mura_root / "MURA-v1.1/train/XR_WRIST/patient00002/study1_negative/image1.png"
    missing.unlink()
    with pytest.raises(MuraFormatError, match=r"1 image file.*missing.*patient00002"):
        read_split(mura_root=mura_root, split="train")


def test_study_without_label_row_is_an_error(mura_root: Path):
    labels = mura_root / "MURA-v1.1" / "train_labeled_studies.csv"
    labels.write_text("\n".join(line for line in labels.read_text().splitlines() if "XR_ELBOW" not in line))
    with pytest.raises(MuraFormatError, match=r"patient00003.*no row"):
        read_split(mura_root=mura_root, split="train")


def test_not_a_mura_directory(tmp_path: Path):
    with pytest.raises(MuraFormatError, match="not a MURA directory"):
        read_split(mura_root=tmp_path, split="valid")


def test_unknown_body_part_and_split(mura_root: Path):
    with pytest.raises(MuraFormatError, match="unknown body part"):
        read_split(mura_root=mura_root, split="train", body_part="XR_KNEE")
    with pytest.raises(MuraFormatError, match="unknown split"):
        read_split(mura_root=mura_root, split="test")
