"""Evaluate the installed models on a MURA split, study by study, into a Markdown report."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference.evaluation import evaluate_studies, write_report
from inference.mura import SPLITS, MuraFormatError, body_parts_in, read_split
from inference.registry import ModelLoadError, ModelRegistry


class Command(BaseCommand):
    help = (
        "Predict every image of a MURA split for each body part that has a model, take each study's "
        "mean P(abnormal), and write Cohen's kappa, AUROC, sensitivity, specificity and the confusion "
        "matrix per body part to report.md with a ROC plot (roc.png)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--mura-root", type=Path, required=True, help="folder holding MURA-v1.1/ (or it)")
        parser.add_argument("--split", choices=SPLITS, default="valid")
        parser.add_argument(
            "--model-dir", type=Path, help="folder with models.toml (default: MSKDETECT_MODEL_DIR)"
        )
        parser.add_argument(
            "--out", type=Path, default=Path("evaluation"), help="folder for report.md and roc.png"
        )
        parser.add_argument("--batch-size", type=int, default=settings.MSKDETECT_BATCH_SIZE)

    def handle(self, *args, **options) -> None:
        model_dir: Path = options["model_dir"] or settings.MSKDETECT_MODEL_DIR
        try:
            studies = read_split(mura_root=options["mura_root"], split=options["split"])
            registry = ModelRegistry(model_dir)
        except (MuraFormatError, ModelLoadError) as error:
            raise CommandError(str(error)) from error
        present = body_parts_in(studies)
        covered = [part for part in present if registry.available(part)]
        if not covered:
            raise CommandError(
                f"no installed model in {model_dir} for the body parts of this split ({', '.join(present)})"
            )
        for part in present:
            if part not in covered:
                self.stderr.write(f"{part}: no installed model, left out")
        try:
            evaluations = evaluate_studies(
                studies=studies, registry=registry, batch_size=options["batch_size"]
            )
        except ModelLoadError as error:
            raise CommandError(str(error)) from error
        report, roc = write_report(evaluations=evaluations, split=options["split"], out_dir=options["out"])
        for evaluation in evaluations:
            m = evaluation.metrics
            self.stdout.write(
                f"{evaluation.body_part}: {m.count} studies, kappa {m.kappa:.3f}, AUROC {m.auroc:.3f}, "
                f"sensitivity {m.sensitivity:.3f}, specificity {m.specificity:.3f}"
            )
            if evaluation.failed_images:
                self.stderr.write(
                    f"{evaluation.body_part}: {len(evaluation.failed_images)} image(s) unreadable"
                )
        self.stdout.write(self.style.SUCCESS(f"wrote {report} and {roc}"))
