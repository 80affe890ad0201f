"""Where the openly licensed test radiographs (``../shared/data``) live on this machine.

Tests and benchmarks read them in place, never copies. No heavy imports: tests' conftest uses it.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


class SharedDataNotFound(RuntimeError):
    """The shared radiographs cannot be found."""


def locate_shared_data() -> Path:
    """``$MSKDETECT_SHARED_DATA``, else ``<repo>/../shared/data``, else ``/work/shared/data``."""
    candidates = [
        os.environ.get("MSKDETECT_SHARED_DATA"),
        REPO_ROOT.parent / "shared" / "data",
        "/work/shared/data",
    ]
    for candidate in candidates:
        if candidate and Path(candidate, "README.md").is_file():
            return Path(candidate)
    raise SharedDataNotFound("shared radiographs not found: set MSKDETECT_SHARED_DATA to ../shared/data")
