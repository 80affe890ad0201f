"""Convert the installed models to ONNX ahead of time, so the first job of an ONNX worker does not wait."""

from __future__ import annotations

import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference.onnx_runtime import RUNTIME_ONNX, OnnxClassifier
from inference.predictor import Predictor
from inference.registry import ModelLoadError, ModelRegistry


class Command(BaseCommand):
    help = (
        "Convert every installed model (or the given body parts) to ONNX in MSKDETECT_ONNX_DIR and check "
        "each against Keras. Workers with MSKDETECT_RUNTIME=onnx then load the converted files."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("body_parts", nargs="*", metavar="BODY_PART", help="default: all installed")
        parser.add_argument("--model-dir", type=Path, help="default: MSKDETECT_MODEL_DIR")
        parser.add_argument("--onnx-dir", type=Path, help="default: MSKDETECT_ONNX_DIR")

    def handle(self, *args, **options) -> None:
        registry = ModelRegistry(options["model_dir"] or settings.MSKDETECT_MODEL_DIR, cache_size=1)
        onnx_dir: Path = options["onnx_dir"] or settings.MSKDETECT_ONNX_DIR
        installed = [part for part in registry.body_parts() if registry.available(part)]
        body_parts = options["body_parts"] or installed
        unknown = sorted(set(body_parts) - set(registry.body_parts()))
        if unknown:
            raise CommandError(f"not in the manifest: {', '.join(unknown)}")
        if not body_parts:
            raise CommandError(f"no model file is installed in {registry.model_dir}: nothing to convert")
        failed = []
        for body_part in body_parts:
            started = time.perf_counter()
            try:
                loaded = registry.get(body_part)
            except ModelLoadError as error:
                self.stderr.write(f"{body_part}: {error}")
                failed.append(body_part)
                continue
            if isinstance(loaded.model, OnnxClassifier):
                self.stdout.write(f"{body_part}: {loaded.spec.path.name} is ONNX already: served as it is")
                continue
            predictor = Predictor(loaded, runtime=RUNTIME_ONNX, onnx_dir=onnx_dir)
            seconds = time.perf_counter() - started
            if predictor.runtime != RUNTIME_ONNX:
                self.stderr.write(f"{body_part}: ONNX Runtime cannot serve {loaded.spec.name} (see the log)")
                failed.append(body_part)
                continue
            onnx_model = predictor.onnx_model
            self.stdout.write(
                f"{body_part}: {onnx_model.path} (max difference from Keras {onnx_model.max_difference:.1e}, "
                f"{seconds:.1f} s)"
            )
        if failed:
            raise CommandError(f"{len(failed)} model(s) not converted: {', '.join(failed)}")
