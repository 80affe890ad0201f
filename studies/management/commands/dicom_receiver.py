"""`manage.py dicom_receiver`: receive radiographs by DICOM C-STORE (studies.dicom_receiver).

Runs in the foreground until SIGTERM or Ctrl-C, then stops gracefully. `--healthcheck` instead
asks a running receiver for a C-ECHO and exits 0 when it answers (a container health probe).
"""

import logging
import signal

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from studies.dicom_receiver import DicomReceiver, echo


class Command(BaseCommand):
    help = "Run the DICOM receiver (storage SCP): MSKDETECT_DICOM_AE_TITLE on MSKDETECT_DICOM_PORT."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--port", type=int, default=None, help="default: MSKDETECT_DICOM_PORT (11112)")
        parser.add_argument("--ae-title", default=None, help="default: MSKDETECT_DICOM_AE_TITLE (MSKDETECT)")
        parser.add_argument("--bind", default="0.0.0.0", help="address to listen on (default: all)")
        parser.add_argument(
            "--grace-seconds",
            type=float,
            default=20.0,
            help="at shutdown, how long associations in progress may finish before they are aborted",
        )
        parser.add_argument(
            "--healthcheck",
            action="store_true",
            help="C-ECHO the receiver on localhost and exit 0 if it answers (even with a rejection)",
        )

    def handle(self, *args, **options) -> None:
        ae_title = options["ae_title"] or settings.MSKDETECT_DICOM_AE_TITLE
        port = settings.MSKDETECT_DICOM_PORT if options["port"] is None else options["port"]
        if options["healthcheck"]:
            answer = echo(host="127.0.0.1", port=port, called_ae=ae_title)
            if answer is None:
                raise CommandError(f"No DICOM receiver answers on port {port}.")
            self.stdout.write(f"DICOM receiver on port {port}: {answer}")
            return
        # One line per association from our logger; pynetdicom's own lines per message are noise.
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        receiver = DicomReceiver(
            ae_title=ae_title,
            port=port,
            allowed=settings.MSKDETECT_DICOM_ALLOWED,
            bind_address=options["bind"],
            max_associations=settings.MSKDETECT_DICOM_MAX_ASSOCIATIONS,
            heartbeat_seconds=settings.MSKDETECT_DICOM_HEARTBEAT_SECONDS,
            grace_seconds=options["grace_seconds"],
        )
        try:
            receiver.start()
        except OSError as exc:
            raise CommandError(f"Cannot listen on {options['bind']}:{port}: {exc}") from exc
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: receiver.request_stop())
        self.stdout.write(f"DICOM receiver {ae_title} on port {receiver.port}; SIGTERM or Ctrl-C stops it.")
        receiver.wait()
        self.stdout.write("Stopping the DICOM receiver...")
        receiver.stop()
