"""Receiving by DICOM (issue 13, part 1): issuer-aware MRNs, StudyInstanceUID and SOPInstanceUID
(each unique when known), studies that wait for a body part, and the receiver's heartbeat row."""

from django.db import migrations, models

STUDY_STATUSES = [
    ("new", "New"),
    ("queued", "Queued"),
    ("processing", "Processing"),
    ("predicted", "Predicted"),
    ("failed", "Failed"),
    ("unsupported", "Unsupported"),
    ("needs_human_read", "Needs a human read"),
    ("reviewed", "Reviewed"),
    ("needs_body_part", "Waiting for the body part"),
]
IMAGE_STATUSES = [
    ("queued", "Queued"),
    ("processing", "Processing"),
    ("done", "Done"),
    ("failed", "Failed"),
    ("unsupported", "Unsupported"),
    ("needs_human_read", "Needs a human read"),
    ("needs_body_part", "Waiting for the body part"),
]
BODY_PARTS = [
    ("XR_ELBOW", "Elbow"),
    ("XR_FINGER", "Finger"),
    ("XR_FOREARM", "Forearm"),
    ("XR_HAND", "Hand"),
    ("XR_HUMERUS", "Humerus"),
    ("XR_SHOULDER", "Shoulder"),
    ("XR_WRIST", "Wrist"),
]


class Migration(migrations.Migration):
    dependencies = [("studies", "0010_worker_liveness")]

    operations = [
        # Patients: one MRN per issuer (blank issuer: this hospital's own MRNs).
        migrations.AddField(
            model_name="patient",
            name="mrn_issuer",
            field=models.CharField(blank=True, default="", max_length=64, verbose_name="MRN issuer"),
        ),
        migrations.AlterField(
            model_name="patient",
            name="mrn",
            field=models.CharField(max_length=64, verbose_name="MRN"),
        ),
        migrations.AddConstraint(
            model_name="patient",
            constraint=models.UniqueConstraint(
                fields=("mrn", "mrn_issuer"), name="patient_mrn_unique_per_issuer"
            ),
        ),
        # Studies: StudyInstanceUID, and a blank body part while a received study waits for staff.
        migrations.RemoveConstraint(model_name="study", name="study_body_part_valid"),
        migrations.RemoveConstraint(model_name="study", name="study_status_valid"),
        migrations.AddField(
            model_name="study",
            name="study_instance_uid",
            field=models.CharField(blank=True, default="", max_length=64, verbose_name="StudyInstanceUID"),
        ),
        migrations.AlterField(
            model_name="study",
            name="body_part",
            field=models.CharField(blank=True, choices=BODY_PARTS, max_length=16),
        ),
        migrations.AlterField(
            model_name="study",
            name="status",
            field=models.CharField(choices=STUDY_STATUSES, default="new", max_length=16),
        ),
        migrations.AddConstraint(
            model_name="study",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    ("body_part__in", [value for value, _ in BODY_PARTS]), ("body_part", ""), _connector="OR"
                ),
                name="study_body_part_valid",
            ),
        ),
        migrations.AddConstraint(
            model_name="study",
            constraint=models.CheckConstraint(
                condition=models.Q(("status__in", [value for value, _ in STUDY_STATUSES])),
                name="study_status_valid",
            ),
        ),
        migrations.AddConstraint(
            model_name="study",
            constraint=models.UniqueConstraint(
                condition=models.Q(("study_instance_uid", ""), _negated=True),
                fields=("study_instance_uid",),
                name="study_instance_uid_unique",
            ),
        ),
        # Radiographs: SOPInstanceUID, and the status of an image waiting for its study's body part.
        migrations.RemoveConstraint(model_name="radiograph", name="radiograph_status_valid"),
        migrations.AddField(
            model_name="radiograph",
            name="sop_instance_uid",
            field=models.CharField(blank=True, default="", max_length=64, verbose_name="SOPInstanceUID"),
        ),
        migrations.AlterField(
            model_name="radiograph",
            name="status",
            field=models.CharField(choices=IMAGE_STATUSES, default="queued", max_length=16),
        ),
        migrations.AddConstraint(
            model_name="radiograph",
            constraint=models.CheckConstraint(
                condition=models.Q(("status__in", [value for value, _ in IMAGE_STATUSES])),
                name="radiograph_status_valid",
            ),
        ),
        migrations.AddConstraint(
            model_name="radiograph",
            constraint=models.UniqueConstraint(
                condition=models.Q(("sop_instance_uid", ""), _negated=True),
                fields=("sop_instance_uid",),
                name="radiograph_sop_instance_uid_unique",
            ),
        ),
        migrations.CreateModel(
            name="DicomReceiverRun",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("run_id", models.CharField(max_length=64, unique=True)),
                ("ae_title", models.CharField(max_length=16)),
                ("port", models.PositiveIntegerField()),
                ("host", models.CharField(max_length=255)),
                ("pid", models.PositiveIntegerField()),
                ("started_at", models.DateTimeField()),
                ("beat_at", models.DateTimeField(db_index=True)),
                ("stopped_at", models.DateTimeField(blank=True, null=True)),
                ("associations", models.PositiveIntegerField(default=0)),
                ("associations_refused", models.PositiveIntegerField(default=0)),
                ("instances_stored", models.PositiveIntegerField(default=0)),
                ("instances_duplicate", models.PositiveIntegerField(default=0)),
                ("instances_refused", models.PositiveIntegerField(default=0)),
                ("last_received_at", models.DateTimeField(blank=True, null=True)),
            ],
            options={"ordering": ["-beat_at"]},
        ),
    ]
