"""`install_model` fits and writes the model version's OOD reference, or refuses and changes nothing."""

from __future__ import annotations

import pytest
from django.core.management import CommandError

from inference.ood import read_reference
from inference.registry import file_sha256
from tests.conftest import SHARED_DATA
from tests.inference.test_install_model import install, snapshot


def test_install_writes_the_reference_from_the_shared_radiographs(tmp_path, tiny_model_file):
    model_dir = tmp_path / "models"

    out = install(str(tiny_model_file), "--body-part", "XR_WRIST", "--model-dir", str(model_dir))

    version = file_sha256(path=tiny_model_file)
    reference = read_reference(model_dir=model_dir, version=version)
    assert reference is not None
    assert reference.meta["images"] == 13 and reference.meta["source"] == str(SHARED_DATA.resolve())
    assert f"ood/{version}.npz" in out and f"threshold {reference.threshold:.2f}" in out


def test_install_fits_on_a_given_folder(tmp_path, tiny_model_file):
    folder = SHARED_DATA / "png16"  # read in place: 9 wrist PNGs beside labels.csv
    model_dir = tmp_path / "models"

    install(
        str(tiny_model_file),
        "--body-part",
        "XR_WRIST",
        "--model-dir",
        str(model_dir),
        "--ood-reference",
        str(folder),
    )

    reference = read_reference(model_dir=model_dir, version=file_sha256(path=tiny_model_file))
    assert reference.meta["images"] == 9
    assert all(name.endswith(".png") for name in reference.meta["sources"])


def test_a_reference_folder_too_small_is_refused_and_nothing_changes(tmp_path, tiny_model_file):
    folder = tmp_path / "two"
    folder.mkdir()
    for path in sorted((SHARED_DATA / "png16").glob("*.png"))[:2]:
        (folder / path.name).symlink_to(path)  # the shared files themselves, read in place
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    (model_dir / "keep.txt").write_text("x")
    before = snapshot(model_dir)

    with pytest.raises(CommandError, match="needs at least 3 images"):
        install(
            str(tiny_model_file),
            "--body-part",
            "XR_WRIST",
            "--model-dir",
            str(model_dir),
            "--ood-reference",
            str(folder),
        )

    assert snapshot(model_dir) == before
