"""Predict radiograph files from the command line: one JSON object per file, one per line."""

from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference.decoding import DecodedImage, DecodeError, decode_image
from inference.onnx_runtime import RUNTIMES
from inference.predictor import Predictor
from inference.registry import BODY_PARTS, ModelLoadError, ModelRegistry, UnsupportedBodyPart


def _heatmap_path(*, heatmap_dir: Path, source: Path, taken: set[Path]) -> Path:
    # Two inputs may share a file name (a/img.png, b/img.png): never overwrite an earlier heat map.
    candidate = heatmap_dir / f"{source.stem}.heatmap.png"
    counter = 2
    while candidate in taken:
        candidate = heatmap_dir / f"{source.stem}.heatmap-{counter}.png"
        counter += 1
    taken.add(candidate)
    return candidate


class Command(BaseCommand):
    help = (
        "Predict P(abnormal) for PNG, JPEG or DICOM files with a body part's model. Prints one JSON "
        "object per file; exits non-zero when any file could not be read."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
        parser.add_argument("--body-part", required=True, help=f"one of {', '.join(BODY_PARTS)}")
        parser.add_argument(
            "--model-dir", type=Path, help="folder with models.toml (default: MSKDETECT_MODEL_DIR)"
        )
        parser.add_argument("--heatmap-dir", type=Path, help="write a Grad-CAM overlay PNG per file here")
        parser.add_argument("--batch-size", type=int, default=settings.MSKDETECT_BATCH_SIZE)
        parser.add_argument(
            "--runtime",
            choices=RUNTIMES,
            default=settings.MSKDETECT_RUNTIME,
            help="engine for the forward pass (default: MSKDETECT_RUNTIME); onnx falls back to keras",
        )

    def handle(self, *args, **options) -> None:
        body_part: str = options["body_part"]
        model_dir: Path = options["model_dir"] or settings.MSKDETECT_MODEL_DIR
        if body_part not in BODY_PARTS:
            raise CommandError(f"unknown body part {body_part!r}; choose one of {', '.join(BODY_PARTS)}")
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        try:
            registry = ModelRegistry(model_dir)
            registry.spec(body_part)
            loaded = registry.get(body_part)
        except UnsupportedBodyPart as error:
            configured = ", ".join(registry.body_parts()) or "none"
            raise CommandError(
                f"{body_part} is not supported: no model for it in {model_dir} (configured: {configured})"
            ) from error
        except ModelLoadError as error:
            raise CommandError(str(error)) from error

        results: list[dict] = []
        decoded: list[tuple[int, Path, DecodedImage]] = []
        for path in options["files"]:
            try:
                decoded.append((len(results), path, decode_image(path.read_bytes())))
                results.append({"file": str(path)})
            except (OSError, DecodeError) as error:
                reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
                results.append({"file": str(path), "error": reason})

        if decoded:
            predictor = Predictor(
                loaded,
                batch_size=options["batch_size"],
                runtime=options["runtime"],
                onnx_dir=settings.MSKDETECT_ONNX_DIR,
            )
            batch = predictor.preprocess([image for _, _, image in decoded])
            run = predictor.run(batch, heatmaps=options["heatmap_dir"] is not None)
            probabilities = run.probabilities
            heatmap_paths = self._heatmaps(
                loaded, run.heatmaps, decoded, options["heatmap_dir"], available=predictor.heatmaps_available
            )
            spec = loaded.spec
            for position, ((index, _, _), probability) in enumerate(zip(decoded, probabilities, strict=True)):
                results[index].update(
                    abnormal_probability=round(float(probability), 6),
                    label=spec.label_for(probability),
                    model_name=spec.name,
                    model_version=loaded.version,
                    demo=spec.demo,
                    runtime=predictor.runtime,
                )
                if heatmap_paths:
                    results[index]["heatmap"] = str(heatmap_paths[position])

        for result in results:
            self.stdout.write(json.dumps(result))
        failed = sum("error" in result for result in results)
        if failed:
            raise CommandError(f"{failed} of {len(results)} file(s) could not be read")

    def _heatmaps(
        self, loaded, heatmaps, decoded, heatmap_dir: Path | None, *, available: bool
    ) -> list[Path]:
        if heatmap_dir is None:
            return []
        if heatmaps is None:  # the predictions stand
            self.stderr.write(
                "Grad-CAM failed for this model (see the log): no heat maps written"
                if available
                else f"{loaded.spec.name} gives no heat maps (an ONNX or SavedModel graph): none written"
            )
            return []
        from inference.gradcam import heatmap_overlay_png

        heatmap_dir.mkdir(parents=True, exist_ok=True)
        taken: set[Path] = set()
        paths = []
        for (_, source, image), heatmap in zip(decoded, heatmaps, strict=True):
            path = _heatmap_path(heatmap_dir=heatmap_dir, source=source, taken=taken)
            path.write_bytes(heatmap_overlay_png(image, heatmap, preprocessing=loaded.spec.preprocessing))
            paths.append(path)
        return paths
