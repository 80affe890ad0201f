# Intake checks (issue 10, points 1 and 4): the DICOM header kept per image, confirmed header
# mismatches with their reason and confirmer, and the number of files a study expects.
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("studies", "0006_model_version"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="radiograph",
            name="dicom_header",
            field=models.JSONField(blank=True, default=dict, editable=False),
        ),
        migrations.AddField(
            model_name="radiograph",
            name="mismatches",
            field=models.JSONField(blank=True, default=list, editable=False),
        ),
        migrations.AddField(
            model_name="radiograph",
            name="mismatch_reason",
            field=models.TextField(blank=True),
        ),
        migrations.AddField(
            model_name="radiograph",
            name="mismatch_confirmed_by",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AddField(
            model_name="study",
            name="expected_images",
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="study",
            name="marked_complete_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="study",
            name="marked_complete_by",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AddConstraint(
            model_name="radiograph",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    ("mismatch_confirmed_by__isnull", True),
                    models.Q(("mismatch_reason", ""), _negated=True),
                    _connector="OR",
                ),
                name="radiograph_confirmed_mismatch_has_reason",
            ),
        ),
        migrations.AddConstraint(
            model_name="study",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    ("expected_images__isnull", True), ("expected_images__gte", 1), _connector="OR"
                ),
                name="study_expected_images_positive",
            ),
        ),
    ]
