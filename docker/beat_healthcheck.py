"""Health check of the `beat` container: exit 0 when celery beat is alive and can reach the broker.

Beat answers no `inspect ping`, but it writes its schedule file at least every few minutes
(on each sync, at most `sync_every` = 3 min apart plus one loop of at most 5 min). A stale file
means beat is stuck; an unreachable broker means nothing it schedules is delivered.
"""

import argparse
import logging
import os
import sys
import time
from pathlib import Path

logger = logging.getLogger("mskdetect.beat_healthcheck")


def schedule_age_seconds(*, schedule: Path, now: float | None = None) -> float | None:
    """Seconds since beat last wrote its schedule (any of the dbm files), or None if there is none."""
    files = [path for path in schedule.parent.glob(schedule.name + "*") if path.is_file()]
    if not files:
        return None
    now = time.time() if now is None else now
    return now - max(path.stat().st_mtime for path in files)


def broker_reachable(*, url: str, timeout: float) -> bool:
    """Open and close one connection to the broker."""
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=timeout) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
    except Exception as exc:
        logger.error("broker unreachable: %s", exc)
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedule", type=Path, required=True, help="the file given to `beat --schedule`")
    parser.add_argument("--max-age", type=float, default=900.0, help="seconds before the schedule is stale")
    parser.add_argument("--broker-timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    age = schedule_age_seconds(schedule=args.schedule)
    if age is None:
        logger.error("no schedule file at %s: beat has not started", args.schedule)
        return 1
    if age > args.max_age:
        logger.error("schedule %s last written %.0f s ago (limit %.0f s)", args.schedule, age, args.max_age)
        return 1
    url = os.environ.get("CELERY_BROKER_URL", "")
    if not url:
        logger.error("CELERY_BROKER_URL is not set")
        return 1
    return 0 if broker_reachable(url=url, timeout=args.broker_timeout) else 1


if __name__ == "__main__":
    sys.exit(main())
