"""Throughput of the original app's per-image inference against the worker's batched path.

Both paths run the same model (the seed architecture with random weights: speed does not depend
on the weight values) on the same real radiographs, in the same process, each warmed up first:

- ``seed``: what the Flask app did for every upload: ``skimage.io.imread(file)`` →
  ``resize(img, (300, 300, 3))`` → centre crop 224 → ``/ 255`` → ``model.predict`` on a batch of
  one. skimage cannot read DICOM, and the original app never saw one; for DICOM files this path
  decodes with ``inference.decoding`` and applies the ``seed`` profile (the same resize/crop/scale).
  16-bit PNGs go through ``imread`` as the original would have taken them.
- ``worker``: the production path: read bytes → ``decode_image`` → preprocessing profile →
  ``Predictor`` (a compiled ``tf.function`` on batches of ``batch_size``).

FLOPs are counted analytically from the layer shapes: 2 x multiply-accumulates of every Conv2D,
DepthwiseConv2D and Dense layer (nested models included). Batch norm, activations, pooling and
additions are left out (under 1 % of the total for InceptionResNetV2). SGEMM throughput is numpy's
float32 matrix product (BLAS, all cores), best of several runs, measured in the same process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np

from inference.decoding import decode_image
from inference.preprocessing import INPUT_SIZE, get_profile
from inference.shared_data import SharedDataNotFound

SEED_RESIZE = 300
_IMAGE_FOLDERS = ("png16", "jpeg", "dicom")


class BenchmarkDataError(SharedDataNotFound):
    """The shared radiographs the benchmark runs on cannot be found."""


@dataclass(frozen=True)
class BenchmarkResult:
    images: int
    batch_size: int
    seed_images_per_s: float
    worker_images_per_s: float
    speedup: float
    # What the Celery worker does per study: the worker path plus a Grad-CAM map per image.
    worker_with_heatmaps_images_per_s: float
    gflop_per_image: float
    sgemm_gflops: float
    worker_gflops: float
    sgemm_fraction: float
    threads: int
    runtime: str  # the worker path's engine: keras or onnx
    # Where the time goes, in ms per image: both paths decode the same files, so decoding
    # (DICOM JPEG 2000 above all) bounds the end-to-end ratio; model_speedup isolates batching.
    seed_preprocess_ms: float
    seed_model_ms: float
    worker_decode_ms: float
    worker_preprocess_ms: float
    worker_model_ms: float
    model_speedup: float

    def as_dict(self) -> dict[str, float | int]:
        """The figures, rounded for printing as JSON."""
        return {
            key: round(value, 4) if isinstance(value, float) else value for key, value in asdict(self).items()
        }


def benchmark_files(*, data_dir: Path, count: int) -> list[Path]:
    """``count`` files cycling through the 16-bit PNG, JPEG and DICOM radiographs, in a fixed order."""
    files = [
        path
        for folder in _IMAGE_FOLDERS
        for path in sorted((data_dir / folder).iterdir())
        if path.is_file() and path.suffix.lower() not in {".csv", ".md", ".txt"}
    ]
    if not files:
        raise BenchmarkDataError(f"no radiographs under {data_dir}/{{{','.join(_IMAGE_FOLDERS)}}}")
    return [files[i % len(files)] for i in range(count)]


def seed_preprocess_file(path: Path) -> np.ndarray:
    """The original app's preprocessing of one file (DICOM: decoded, then the seed profile)."""
    from skimage.io import imread
    from skimage.transform import resize

    data = path.read_bytes()
    if data[:4] == b"\x89PNG" or data[:3] == b"\xff\xd8\xff":
        image = resize(imread(path), (SEED_RESIZE, SEED_RESIZE, 3))
        offset = (SEED_RESIZE - INPUT_SIZE) // 2
        return image[offset : offset + INPUT_SIZE, offset : offset + INPUT_SIZE] / 255.0
    return get_profile("seed")(decode_image(data))


@dataclass
class StageSeconds:
    """Wall-clock seconds spent in each stage of a path, summed over its images."""

    decode: float = 0.0
    preprocess: float = 0.0
    model: float = 0.0


def run_seed_path(
    *, model: keras.Model, paths: Sequence[Path], stages: StageSeconds | None = None
) -> np.ndarray:
    """Per image: preprocess, then ``model.predict`` on a batch of one; returns P(output 0)."""
    stages = stages or StageSeconds()
    outputs = []
    for path in paths:
        started = time.perf_counter()
        batch = seed_preprocess_file(path)[np.newaxis]
        preprocessed = time.perf_counter()
        outputs.append(model.predict(batch, verbose=0)[0, 0])
        stages.preprocess += preprocessed - started  # skimage reads and resizes in one go
        stages.model += time.perf_counter() - preprocessed
    return np.asarray(outputs)


def run_worker_path(
    *, predictor, paths: Sequence[Path], stages: StageSeconds | None = None, heatmaps: bool = False
) -> np.ndarray:
    """Read, decode, preprocess and predict all files through a ``Predictor``; returns P(abnormal).

    ``heatmaps=True`` also computes the Grad-CAM maps, as the Celery worker does for every study.
    """
    stages = stages or StageSeconds()
    started = time.perf_counter()
    decoded = [decode_image(path.read_bytes()) for path in paths]
    decoded_at = time.perf_counter()
    batch = predictor.preprocess(decoded)
    preprocessed_at = time.perf_counter()
    probabilities = predictor.run(batch, heatmaps=heatmaps).probabilities
    stages.decode += decoded_at - started
    stages.preprocess += preprocessed_at - decoded_at
    stages.model += time.perf_counter() - preprocessed_at
    return probabilities


def timed(function: Callable[[], object]) -> float:
    """Wall-clock seconds of one call."""
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def _macs(layer: keras.layers.Layer) -> int:
    if isinstance(layer, keras.Model):
        return sum(_macs(inner) for inner in layer.layers)
    try:
        in_shape, out_shape = layer.input.shape, layer.output.shape
    except (AttributeError, ValueError):
        return 0
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw = layer.kernel_size
        return int(np.prod(out_shape[1:]) * kh * kw)
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw = layer.kernel_size
        return int(np.prod(out_shape[1:]) * kh * kw * in_shape[-1] // layer.groups)
    if isinstance(layer, keras.layers.Dense):
        return int(np.prod(out_shape[1:]) * in_shape[-1])
    return 0


def model_gflop_per_image(model: keras.Model) -> float:
    """Forward-pass GFLOP per image: 2 x the MACs of the Conv2D, DepthwiseConv2D and Dense layers."""
    return 2 * _macs(model) / 1e9


def sgemm_gflops(*, size: int = 2048, repeats: int = 5) -> float:
    """Best float32 matrix-product throughput (GFLOP/s) of numpy's BLAS on this machine."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    np.matmul(a, b)  # warm-up: thread pool start, page faults
    best = min(timed(lambda: np.matmul(a, b)) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def run_benchmark(
    *,
    model: keras.Model,
    predictor,
    paths: Sequence[Path],
    batch_size: int,
    log: Callable[[str], None] = lambda _: None,
) -> BenchmarkResult:
    """Warm both paths up, time each once over ``paths``, and relate the worker's rate to SGEMM."""
    log("warming up the seed path")
    run_seed_path(model=model, paths=paths[:1])
    log("warming up the worker path")
    run_worker_path(predictor=predictor, paths=paths)  # traces every batch shape it will meet
    seed_stages, worker_stages = StageSeconds(), StageSeconds()
    log(f"timing the seed path on {len(paths)} images")
    seed_seconds = timed(lambda: run_seed_path(model=model, paths=paths, stages=seed_stages))
    log(f"timing the worker path on {len(paths)} images")
    worker_seconds = timed(lambda: run_worker_path(predictor=predictor, paths=paths, stages=worker_stages))
    log(f"timing the worker path with Grad-CAM heat maps on {len(paths)} images")
    heatmap_seconds = timed(lambda: run_worker_path(predictor=predictor, paths=paths, heatmaps=True))
    log("measuring SGEMM")
    sgemm = sgemm_gflops()
    gflop = model_gflop_per_image(model)
    seed_rate = len(paths) / seed_seconds
    worker_rate = len(paths) / worker_seconds
    return BenchmarkResult(
        images=len(paths),
        batch_size=batch_size,
        seed_images_per_s=seed_rate,
        worker_images_per_s=worker_rate,
        speedup=worker_rate / seed_rate,
        worker_with_heatmaps_images_per_s=len(paths) / heatmap_seconds,
        gflop_per_image=gflop,
        sgemm_gflops=sgemm,
        worker_gflops=gflop * worker_rate,
        sgemm_fraction=gflop * worker_rate / sgemm,
        threads=len(os.sched_getaffinity(0)),
        runtime=predictor.runtime,
        seed_preprocess_ms=seed_stages.preprocess * 1000 / len(paths),
        seed_model_ms=seed_stages.model * 1000 / len(paths),
        worker_decode_ms=worker_stages.decode * 1000 / len(paths),
        worker_preprocess_ms=worker_stages.preprocess * 1000 / len(paths),
        worker_model_ms=worker_stages.model * 1000 / len(paths),
        model_speedup=seed_stages.model / worker_stages.model,
    )
