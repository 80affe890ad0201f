"""Wait until the configured database accepts connections; exit 1 after a timeout.

Run by docker/entrypoint.sh before every process. PostgreSQL's health check passes a little before
it accepts connections from other containers, and after a database restart the app should wait
rather than crash-loop.
"""

import logging
import os
import sys
import time
from pathlib import Path

logger = logging.getLogger("mskdetect.wait_for_db")


def wait_for_database(*, timeout: float, interval: float = 1.0) -> bool:
    """Try to connect until it works (True) or `timeout` seconds have passed (False)."""
    from django.db import connections
    from django.db.utils import OperationalError

    deadline = time.monotonic() + timeout
    while True:
        connection = connections["default"]
        try:
            connection.ensure_connection()
        except OperationalError as exc:
            if time.monotonic() >= deadline:
                logger.error("database unreachable after %.0f s: %s", timeout, exc)
                return False
            logger.info("waiting for the database: %s", str(exc).strip().splitlines()[0])
            time.sleep(interval)
        else:
            connection.close()
            return True


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mskdetect.settings.production")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import django

    django.setup()
    timeout = float(os.environ.get("MSKDETECT_WAIT_FOR_DB_SECONDS", "60"))
    return 0 if wait_for_database(timeout=timeout) else 1


if __name__ == "__main__":
    sys.exit(main())
