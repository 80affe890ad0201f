"""Out-of-distribution images (issue 10, point 2): "needs_human_read" and the OOD score.

Images whose OOD score is above their model version's reference threshold get the image status
"needs_human_read" (their reason in `error`); a study whose every predicted image is out of
distribution gets the study status of the same name. Predictions keep the score, the threshold, and
a note when no score was computed (e.g. the model version has no OOD reference).
"""

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
]
IMAGE_STATUSES = [
    ("queued", "Queued"),
    ("processing", "Processing"),
    ("done", "Done"),
    ("failed", "Failed"),
    ("unsupported", "Unsupported"),
    ("needs_human_read", "Needs a human read"),
]


class Migration(migrations.Migration):
    dependencies = [("studies", "0008_result_tiers")]

    operations = [
        migrations.AddField(
            model_name="prediction",
            name="ood_score",
            field=models.FloatField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="prediction",
            name="ood_threshold",
            field=models.FloatField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="prediction",
            name="ood_note",
            field=models.CharField(blank=True, max_length=200),
        ),
        migrations.RemoveConstraint(model_name="study", name="study_status_valid"),
        migrations.AlterField(
            model_name="study",
            name="status",
            field=models.CharField(choices=STUDY_STATUSES, default="new", max_length=16),
        ),
        migrations.AddConstraint(
            model_name="study",
            constraint=models.CheckConstraint(
                condition=models.Q(status__in=[value for value, _ in STUDY_STATUSES]),
                name="study_status_valid",
            ),
        ),
        migrations.RemoveConstraint(model_name="radiograph", name="radiograph_status_valid"),
        migrations.AlterField(
            model_name="radiograph",
            name="status",
            field=models.CharField(choices=IMAGE_STATUSES, default="queued", max_length=16),
        ),
        migrations.AddConstraint(
            model_name="radiograph",
            constraint=models.CheckConstraint(
                condition=models.Q(status__in=[value for value, _ in IMAGE_STATUSES]),
                name="radiograph_status_valid",
            ),
        ),
    ]
