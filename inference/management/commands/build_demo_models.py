"""Train the synthetic demo models (all seven body parts) and write their ``models.toml``."""

from __future__ import annotations

import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from inference.demo import build_demo_models
from inference.registry import BODY_PARTS


class Command(BaseCommand):
    help = (
        "Train small CNNs on synthetic radiograph-like images for every body part, on the CPU, and "
        "write them with a models.toml marked demo = true. Not for clinical use."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--out",
            type=Path,
            default=Path(settings.BASE_DIR) / "models" / "demo",
            help="directory to write (default: models/demo/, git-ignored); rewritten on every run",
        )
        parser.add_argument("--seed", type=int, default=0, help="random seed for data and weights")
        parser.add_argument(
            "--body-parts", nargs="+", choices=BODY_PARTS, default=list(BODY_PARTS), metavar="BODY_PART"
        )

    def handle(self, *args, **options) -> None:
        out_dir: Path = options["out"]
        started = time.perf_counter()
        # Progress, not an error: stdout (Django styles stderr red).
        self.stdout.write(f"training demo models into {out_dir} (synthetic data; ~1 min on 2 CPU cores)")
        results = build_demo_models(
            out_dir=out_dir, body_parts=tuple(options["body_parts"]), seed=options["seed"]
        )
        for result in results:
            self.stdout.write(
                f"{result.body_part:12s} held-out accuracy {result.held_out_accuracy:6.1%}  "
                f"{result.size_bytes / 1024:6.0f} KiB  {result.seconds:5.1f} s  "
                + (
                    f"OOD threshold {result.ood_threshold:.2f}"
                    if result.ood_threshold is not None
                    else "no OOD reference (shared radiographs not found)"
                )
            )
        # Advice only when it is needed: `make run` has already pointed MSKDETECT_MODEL_DIR here.
        in_use = Path(settings.MSKDETECT_MODEL_DIR).resolve() == Path(out_dir).resolve()
        self.stdout.write(
            f"wrote {len(results)} demo models and models.toml to {out_dir} in "
            f"{time.perf_counter() - started:.0f} s"
            + ("" if in_use else f"; set MSKDETECT_MODEL_DIR={out_dir} to use them")
        )
