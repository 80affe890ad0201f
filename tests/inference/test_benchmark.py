"""The benchmark command runs both paths on real radiographs and reports its figures as JSON."""

import io
import json

import keras
import pytest
from django.core.management import call_command

from inference.benchmark import benchmark_files, model_gflop_per_image, sgemm_gflops

KEYS = {
    "images",
    "batch_size",
    "seed_images_per_s",
    "worker_images_per_s",
    "speedup",
    "worker_with_heatmaps_images_per_s",
    "gflop_per_image",
    "sgemm_gflops",
    "worker_gflops",
    "sgemm_fraction",
    "threads",
    "runtime",
    "seed_preprocess_ms",
    "seed_model_ms",
    "worker_decode_ms",
    "worker_preprocess_ms",
    "worker_model_ms",
    "model_speedup",
}


def test_files_cycle_through_png16_jpeg_and_dicom(shared_data):
    files = benchmark_files(data_dir=shared_data, count=40)
    assert len(files) == 40
    assert {path.parent.name for path in files} == {"png16", "jpeg", "dicom"}
    assert files[16] == files[0]  # 9 PNG + 3 JPEG + 4 DICOM, then round again
    assert "labels.csv" not in {path.name for path in files}


def test_flops_are_counted_from_layer_shapes():
    model = keras.Sequential(
        [
            keras.Input(shape=(8, 8, 3)),
            keras.layers.Conv2D(4, 3),
            keras.layers.Flatten(),
            keras.layers.Dense(5),
        ]
    )
    # Conv: 6*6*4 outputs x 3*3*3 MACs = 3888; Dense: 144*5 = 720; FLOP = 2 x MACs.
    assert model_gflop_per_image(model) == pytest.approx(2 * (3888 + 720) / 1e9)


def test_sgemm_is_measured():
    assert sgemm_gflops(size=256, repeats=2) > 0


@pytest.mark.slow
def test_benchmark_command_prints_all_figures_as_json():
    out = io.StringIO()
    call_command(
        "benchmark_inference", "--images", "2", "--batch-size", "2", stdout=out, stderr=io.StringIO()
    )
    lines = out.getvalue().strip().splitlines()
    figures = json.loads(lines[-1])
    assert set(figures) == KEYS
    assert figures["images"] == 2 and figures["batch_size"] == 2
    assert figures.pop("runtime") == "keras"
    assert all(value > 0 for value in figures.values())
    # InceptionResNetV2 at 224x224 plus the seed head: about 13 GFLOP (6.5 G multiply-adds).
    assert 12 < figures["gflop_per_image"] < 14
    assert figures["sgemm_fraction"] == pytest.approx(
        figures["gflop_per_image"] * figures["worker_images_per_s"] / figures["sgemm_gflops"], rel=0.01
    )
    assert any(line.startswith("speed-up:") for line in lines)
