"""Sending results back to the PACS (issue 13, part 2): what each trigger sends (DicomExport) and
each send to each destination (DicomSend)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("studies", "0011_dicom_receive")]

    operations = [
        migrations.CreateModel(
            name="DicomExport",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "trigger",
                    models.CharField(
                        choices=[("result", "Model result"), ("review", "Radiologist review")], max_length=8
                    ),
                ),
                ("result", models.JSONField()),
                ("demo", models.BooleanField()),
                ("images", models.JSONField(default=list)),
                ("predictions", models.JSONField(blank=True, default=list)),
                ("instances", models.JSONField(blank=True, default=list)),
                ("built_at", models.DateTimeField(blank=True, null=True)),
                ("build_error", models.TextField(blank=True)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "review",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="studies.review",
                    ),
                ),
                (
                    "study",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="dicom_exports",
                        to="studies.study",
                    ),
                ),
            ],
            options={"ordering": ["study_id", "id"]},
        ),
        migrations.CreateModel(
            name="DicomSend",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("destination", models.CharField(max_length=300)),
                (
                    "protocol",
                    models.CharField(
                        choices=[("cstore", "DICOM C-STORE"), ("stowrs", "DICOMweb STOW-RS")], max_length=8
                    ),
                ),
                (
                    "status",
                    models.CharField(
                        choices=[
                            ("pending", "Pending"),
                            ("sent", "Sent"),
                            ("failed", "Failed"),
                            ("not_sent_demo", "Not sent: demo model"),
                        ],
                        default="pending",
                        max_length=16,
                    ),
                ),
                ("attempts", models.PositiveIntegerField(default=0)),
                ("last_error", models.TextField(blank=True)),
                ("acknowledged", models.JSONField(blank=True, default=list)),
                ("pending_since", models.DateTimeField()),
                ("next_attempt_at", models.DateTimeField(blank=True, null=True)),
                ("last_attempt_at", models.DateTimeField(blank=True, null=True)),
                ("sent_at", models.DateTimeField(blank=True, null=True)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("updated_at", models.DateTimeField(auto_now=True)),
                (
                    "export",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="sends",
                        to="studies.dicomexport",
                    ),
                ),
                (
                    "study",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="dicom_sends",
                        to="studies.study",
                    ),
                ),
            ],
            options={"ordering": ["study_id", "-created_at", "-id"]},
        ),
        migrations.AddConstraint(
            model_name="dicomexport",
            constraint=models.CheckConstraint(
                condition=models.Q(("trigger__in", ["result", "review"])), name="dicom_export_trigger_valid"
            ),
        ),
        migrations.AddConstraint(
            model_name="dicomexport",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(("review__isnull", True), ("trigger", "result")),
                    models.Q(("review__isnull", False), ("trigger", "review")),
                    _connector="OR",
                ),
                name="dicom_export_review_iff_review_trigger",
            ),
        ),
        migrations.AddIndex(
            model_name="dicomsend",
            index=models.Index(fields=["status", "next_attempt_at"], name="dicom_send_due"),
        ),
        migrations.AddIndex(
            model_name="dicomsend",
            index=models.Index(fields=["destination", "status"], name="dicom_send_destination"),
        ),
        migrations.AddConstraint(
            model_name="dicomsend",
            constraint=models.CheckConstraint(
                condition=models.Q(("status__in", ["pending", "sent", "failed", "not_sent_demo"])),
                name="dicom_send_status_valid",
            ),
        ),
        migrations.AddConstraint(
            model_name="dicomsend",
            constraint=models.CheckConstraint(
                condition=models.Q(("protocol__in", ["cstore", "stowrs"])), name="dicom_send_protocol_valid"
            ),
        ),
        migrations.AddConstraint(
            model_name="dicomsend",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(("status", "sent"), _negated=True), ("sent_at__isnull", False), _connector="OR"
                ),
                name="dicom_send_sent_has_time",
            ),
        ),
        migrations.AddConstraint(
            model_name="dicomsend",
            constraint=models.UniqueConstraint(
                fields=("export", "destination"), name="dicom_send_once_per_destination"
            ),
        ),
    ]
