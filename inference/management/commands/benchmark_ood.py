"""Print, as JSON, how well the OOD score tells radiographs from things that are not, per model."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference.ood_benchmark import benchmark_model
from inference.registry import ManifestError, ModelLoadError, ModelRegistry
from inference.shared_data import SharedDataNotFound, locate_shared_data


class Command(BaseCommand):
    help = (
        "Score the shared radiographs (leave-one-out where they are in the model's OOD reference), "
        "generated photographs, screenshots, text pages and CT/MR slices, and the radiographs of other "
        "body parts, with each model's out-of-distribution score; print the AUROCs as JSON. "
        "--demo builds the demo models into a temporary folder first."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--model-dir", type=Path, help="folder with models.toml (default: MSKDETECT_MODEL_DIR)"
        )
        parser.add_argument(
            "--body-parts", nargs="+", metavar="BODY_PART", help="default: every installed model"
        )
        parser.add_argument("--demo", action="store_true", help="build the demo models in a temporary folder")
        parser.add_argument(
            "--shared-dir", type=Path, help="the shared radiographs (default: ../shared/data)"
        )
        parser.add_argument("--batch-size", type=int, default=settings.MSKDETECT_BATCH_SIZE)

    def handle(self, *args, **options) -> None:
        try:
            shared_dir = options["shared_dir"] or locate_shared_data()
        except SharedDataNotFound as error:
            raise CommandError(f"{error} (or give --shared-dir)") from error
        if options["demo"]:
            from inference.demo import build_demo_models

            with tempfile.TemporaryDirectory(prefix="ood-demo-") as temporary:
                model_dir = Path(temporary)
                parts = tuple(options["body_parts"] or ("XR_WRIST", "XR_HAND", "XR_FOREARM"))
                self.stderr.write(f"building the demo models for {', '.join(parts)} in {model_dir}...")
                build_demo_models(out_dir=model_dir, body_parts=parts, ood_reference_dir=None)
                self._report(model_dir=model_dir, shared_dir=shared_dir, options=options)
            return
        self._report(
            model_dir=options["model_dir"] or settings.MSKDETECT_MODEL_DIR,
            shared_dir=shared_dir,
            options=options,
        )

    def _report(self, *, model_dir: Path, shared_dir: Path, options: dict) -> None:
        try:
            registry = ModelRegistry(Path(model_dir))
        except ManifestError as error:
            raise CommandError(str(error)) from error
        body_parts = options["body_parts"] or [
            part for part in registry.body_parts() if registry.available(part)
        ]
        models = []
        for body_part in body_parts:
            try:
                loaded = registry.get(body_part)
            except (ModelLoadError, LookupError) as error:
                models.append({"body_part": body_part, "error": str(error)})
                continue
            models.append(
                benchmark_model(
                    loaded=loaded,
                    model_dir=registry.model_dir,
                    shared_dir=shared_dir,
                    batch_size=options["batch_size"],
                )
            )
        figures = [m["radiographs_vs_not"]["auroc"] for m in models if "radiographs_vs_not" in m]
        summary = {
            "model_dir": str(model_dir),
            "models": models,
            "min_auroc_radiographs_vs_not": min(figures) if figures else None,
            "target": 0.95,
        }
        self.stdout.write(json.dumps(summary, indent=2))
