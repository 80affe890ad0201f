"""`manage.py predict`: one JSON line per file, errors per file, heat maps, clear refusals."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from PIL import Image

from inference.decoding import decode_image
from inference.predictor import Predictor
from inference.registry import ModelRegistry
from tests.conftest import REPO_ROOT
from tests.inference.tiny_models import write_tiny_model_dir

RESULT_KEYS = {"file", "abnormal_probability", "label", "model_name", "model_version", "demo", "runtime"}


@pytest.fixture
def radiographs(shared_data) -> list[Path]:
    return [
        shared_data / "png16" / "1068_1253423501_03_WRI-L2_F010.png",
        shared_data / "jpeg" / "IMG0003301.jpg",
        shared_data / "dicom" / "RG2_JPLL.dcm",
    ]


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.strip().splitlines()]


def test_predicts_each_file_and_matches_the_predictor(tiny_model_dir, radiographs):
    out = io.StringIO()
    call_command(
        "predict", *map(str, radiographs), "--body-part", "XR_WRIST", "--model-dir", str(tiny_model_dir),
        "--batch-size", "2", stdout=out,
    )  # fmt: skip
    results = _lines(out.getvalue())
    assert [result["file"] for result in results] == [str(path) for path in radiographs]
    loaded = ModelRegistry(tiny_model_dir).get("XR_WRIST")
    expected = Predictor(loaded).predict([decode_image(path.read_bytes()) for path in radiographs])
    for result, image in zip(results, expected.images, strict=True):
        assert set(result) == RESULT_KEYS
        assert result["abnormal_probability"] == pytest.approx(image.abnormal_probability, abs=1e-5)
        assert result["label"] == image.label
        assert result["model_name"] == "tiny-wrist"
        assert result["model_version"] == loaded.version and len(loaded.version) == 64
        assert result["demo"] is True
        assert result["runtime"] == "keras"


def test_a_bad_file_gets_an_error_line_and_the_others_are_predicted(tiny_model_dir, radiographs, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    missing = tmp_path / "gone.dcm"
    out = io.StringIO()
    with pytest.raises(CommandError, match="2 of 4 file"):
        call_command(
            "predict", str(radiographs[0]), str(bad), str(missing), str(radiographs[1]),
            "--body-part", "XR_WRIST", "--model-dir", str(tiny_model_dir), stdout=out,
        )  # fmt: skip
    results = _lines(out.getvalue())
    assert [set(result) for result in results] == [
        RESULT_KEYS,
        {"file", "error"},
        {"file", "error"},
        RESULT_KEYS,
    ]
    assert "not a PNG, JPEG or DICOM" in results[1]["error"]
    assert "No such file" in results[2]["error"]


def test_heatmaps_are_written_at_the_original_size(radiographs, tmp_path):
    model_dir = write_tiny_model_dir(tmp_path / "models")
    out = io.StringIO()
    heatmap_dir = tmp_path / "heat"
    call_command(
        "predict", str(radiographs[1]), str(radiographs[1]), "--body-part", "XR_WRIST",
        "--model-dir", str(model_dir), "--heatmap-dir", str(heatmap_dir), stdout=out,
    )  # fmt: skip
    results = _lines(out.getvalue())
    paths = [Path(result["heatmap"]) for result in results]
    assert paths[0] != paths[1]  # same input name twice: two files, none overwritten
    for path in paths:
        with Image.open(path) as png:
            assert png.format == "PNG" and png.size == (373, 454) and png.mode == "RGB"


@pytest.mark.parametrize(
    ("body_part", "message"),
    [
        ("XR_ELBOW", "XR_ELBOW is not supported: no model for it"),
        ("XR_KNEE", "unknown body part 'XR_KNEE'"),
        ("XR_HAND", "HAND.h5 for XR_HAND is missing"),
    ],
)
def test_unsupported_body_parts_are_refused_clearly(tiny_model_dir, radiographs, body_part, message):
    with pytest.raises(CommandError, match=message):
        call_command(
            "predict", str(radiographs[0]), "--body-part", body_part, "--model-dir", str(tiny_model_dir),
            stdout=io.StringIO(),
        )  # fmt: skip


def test_exit_status_is_non_zero_when_a_file_fails(tiny_model_dir, radiographs, tmp_path):
    bad = tmp_path / "empty.dcm"
    bad.write_bytes(b"")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "mskdetect.settings.test", "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "manage.py", "predict", str(radiographs[1]), str(bad)]
    completed = subprocess.run(
        [*command, "--body-part", "XR_WRIST", "--model-dir", str(tiny_model_dir)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert completed.returncode == 1, completed.stderr
    results = _lines(completed.stdout)
    assert "abnormal_probability" in results[0]
    assert results[1] == {"file": str(bad), "error": "The file is empty (0 bytes)."}
    assert "1 of 2 file(s) could not be read" in completed.stderr
