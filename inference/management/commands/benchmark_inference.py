"""Compare the original app's per-image inference with the worker's batched path, on real images."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference.architectures import build_seed_model
from inference.benchmark import benchmark_files, run_benchmark
from inference.onnx_runtime import RUNTIME_KERAS, RUNTIMES
from inference.predictor import Predictor
from inference.shared_data import SharedDataNotFound, locate_shared_data


class Command(BaseCommand):
    help = (
        "Build the seed architecture (random weights) and measure images/s of the original per-image "
        "path and of the batched worker path on the shared radiographs, the model's GFLOP per image, "
        "numpy SGEMM GFLOP/s, and the fraction of it the worker reaches. Last line: JSON."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--images", type=int, default=32, help="images per path (cycles the files)")
        parser.add_argument("--batch-size", type=int, default=16)
        parser.add_argument(
            "--runtime",
            choices=RUNTIMES,
            default=RUNTIME_KERAS,
            help="engine of the worker path (onnx converts the model first, about 90 s on 2 cores)",
        )

    def handle(self, *args, **options) -> None:
        images, batch_size = options["images"], options["batch_size"]
        if images < 1 or batch_size < 1:
            raise CommandError("--images and --batch-size must be at least 1")
        try:
            paths = benchmark_files(data_dir=locate_shared_data(), count=images)
        except SharedDataNotFound as error:
            raise CommandError(str(error)) from error
        self.stderr.write("building the seed architecture (InceptionResNetV2, random weights)")
        model = build_seed_model(weights=None)
        with tempfile.TemporaryDirectory() as onnx_dir:
            # ORT reads the file into its session: the converted file is not needed after this.
            predictor = Predictor(
                model, batch_size=batch_size, runtime=options["runtime"], onnx_dir=Path(onnx_dir)
            )
        if predictor.runtime != options["runtime"]:
            raise CommandError(f"the {options['runtime']} runtime could not serve the model (see the log)")
        result = run_benchmark(
            model=model, predictor=predictor, paths=paths, batch_size=batch_size, log=self.stderr.write
        )
        self.stdout.write(f"worker runtime:                       {predictor.runtime:>8}")
        self.stdout.write(f"seed path (per image, model.predict): {result.seed_images_per_s:8.2f} images/s")
        self.stdout.write(f"worker path (batched, compiled):      {result.worker_images_per_s:8.2f} images/s")
        self.stdout.write(f"speed-up:                             {result.speedup:8.2f} x")
        self.stdout.write(
            f"worker path with Grad-CAM heat maps:  {result.worker_with_heatmaps_images_per_s:8.2f} images/s"
        )
        self.stdout.write(f"model:                                {result.gflop_per_image:8.2f} GFLOP/image")
        self.stdout.write(f"worker path compute:                  {result.worker_gflops:8.1f} GFLOP/s")
        self.stdout.write(
            f"SGEMM (numpy float32, {result.threads} threads):      {result.sgemm_gflops:8.1f} GFLOP/s"
        )
        self.stdout.write(f"worker / SGEMM:                       {result.sgemm_fraction:8.1%}")
        self.stdout.write(
            f"ms/image  seed: preprocess {result.seed_preprocess_ms:.1f}, model {result.seed_model_ms:.1f}"
            f" | worker: decode {result.worker_decode_ms:.1f}, preprocess {result.worker_preprocess_ms:.1f},"
            f" model {result.worker_model_ms:.1f}"
        )
        self.stdout.write(f"model-only speed-up (batched vs per image): {result.model_speedup:.2f} x")
        self.stdout.write(json.dumps(result.as_dict()))
