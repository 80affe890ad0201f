"""Three-tier results (issue 10, point 3): "indeterminate" inside a model's band.

Results, predictions and reviews' model labels may now be "indeterminate" (labels widen to 16
characters), results and predictions keep the band they were made with (both bounds null: none),
reviews may "rule" on an indeterminate result, and the worklist's stored sort key becomes a rank:
2 flagged, 1 indeterminate awaiting a read, 0 the rest.

Stored results keep their labels: they were made under a manifest without bands, so they stay
two-tier (a changed band applies to new results only). Only the sort key is recomputed, from each
study's result and reviews, as studies.services.worklist computes it.
"""

from django.db import migrations, models
from django.db.models import Exists, OuterRef

FLAGGED, INDETERMINATE, OTHER = 2, 1, 0


def worklist_rank_from_results(apps, schema_editor):
    Study = apps.get_model("studies", "Study")
    Review = apps.get_model("studies", "Review")
    unreviewed = Study.objects.filter(~Exists(Review.objects.filter(study=OuterRef("pk"))))
    Study.objects.update(worklist_rank=OTHER)
    unreviewed.filter(result__label="abnormal").update(worklist_rank=FLAGGED)
    unreviewed.filter(result__label="indeterminate").update(worklist_rank=INDETERMINATE)


def worklist_flagged_from_rank(apps, schema_editor):
    Study = apps.get_model("studies", "Study")
    Study.objects.filter(worklist_rank=FLAGGED).update(worklist_flagged=True)


class Migration(migrations.Migration):
    dependencies = [("studies", "0007_intake_checks")]

    operations = [
        migrations.AddField(
            model_name="study",
            name="worklist_rank",
            field=models.PositiveSmallIntegerField(
                choices=[(0, "Other"), (1, "Indeterminate, awaiting a radiologist's read"), (2, "Flagged")],
                default=0,
                editable=False,
            ),
        ),
        migrations.RunPython(worklist_rank_from_results, worklist_flagged_from_rank),
        migrations.RemoveIndex(
            model_name="study",
            name="study_worklist_order",
        ),
        migrations.RemoveField(
            model_name="study",
            name="worklist_flagged",
        ),
        migrations.AddField(
            model_name="prediction",
            name="indeterminate_high",
            field=models.FloatField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="prediction",
            name="indeterminate_low",
            field=models.FloatField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="studyresult",
            name="indeterminate_high",
            field=models.FloatField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="studyresult",
            name="indeterminate_low",
            field=models.FloatField(blank=True, null=True),
        ),
        migrations.AlterField(
            model_name="prediction",
            name="label",
            field=models.CharField(
                choices=[("abnormal", "Abnormal"), ("normal", "Normal"), ("indeterminate", "Indeterminate")],
                max_length=16,
            ),
        ),
        migrations.AlterField(
            model_name="review",
            name="decision",
            field=models.CharField(
                choices=[("confirm", "Confirm"), ("override", "Override"), ("rule", "Ruling")], max_length=8
            ),
        ),
        migrations.AlterField(
            model_name="review",
            name="model_label",
            field=models.CharField(
                choices=[("abnormal", "Abnormal"), ("normal", "Normal"), ("indeterminate", "Indeterminate")],
                max_length=16,
            ),
        ),
        migrations.AlterField(
            model_name="studyresult",
            name="label",
            field=models.CharField(
                choices=[("abnormal", "Abnormal"), ("normal", "Normal"), ("indeterminate", "Indeterminate")],
                max_length=16,
            ),
        ),
        migrations.AddIndex(
            model_name="study",
            index=models.Index(
                models.OrderBy(models.F("worklist_rank"), descending=True),
                models.OrderBy(models.F("worklist_probability"), descending=True),
                models.F("created_at"),
                models.F("id"),
                name="study_worklist_rank_order",
            ),
        ),
        migrations.AddConstraint(
            model_name="prediction",
            constraint=models.CheckConstraint(
                condition=models.Q(("label__in", ["abnormal", "normal", "indeterminate"])),
                name="prediction_label_valid",
            ),
        ),
        migrations.AddConstraint(
            model_name="prediction",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(("indeterminate_high__isnull", True), ("indeterminate_low__isnull", True)),
                    models.Q(
                        ("indeterminate_low__gte", 0),
                        ("indeterminate_low__lt", models.F("indeterminate_high")),
                        ("indeterminate_low__lte", models.F("threshold")),
                        ("indeterminate_high__gte", models.F("threshold")),
                        ("indeterminate_high__lte", 1),
                    ),
                    _connector="OR",
                ),
                name="prediction_band_valid",
            ),
        ),
        migrations.AddConstraint(
            model_name="prediction",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(("label", "indeterminate"), _negated=True),
                    ("indeterminate_low__isnull", False),
                    _connector="OR",
                ),
                name="prediction_indeterminate_needs_band",
            ),
        ),
        migrations.AddConstraint(
            model_name="review",
            constraint=models.CheckConstraint(
                condition=models.Q(("final_label__in", ["abnormal", "normal"])),
                name="review_final_label_binary",
            ),
        ),
        migrations.AddConstraint(
            model_name="review",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(("decision", "rule"), ("model_label", "indeterminate")),
                    models.Q(
                        models.Q(("decision", "rule"), _negated=True),
                        models.Q(("model_label", "indeterminate"), _negated=True),
                    ),
                    _connector="OR",
                ),
                name="review_rule_iff_indeterminate",
            ),
        ),
        migrations.AddConstraint(
            model_name="studyresult",
            constraint=models.CheckConstraint(
                condition=models.Q(("label__in", ["abnormal", "normal", "indeterminate"])),
                name="study_result_label_valid",
            ),
        ),
        migrations.AddConstraint(
            model_name="studyresult",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(("indeterminate_high__isnull", True), ("indeterminate_low__isnull", True)),
                    models.Q(
                        ("indeterminate_low__gte", 0),
                        ("indeterminate_low__lt", models.F("indeterminate_high")),
                        ("indeterminate_low__lte", models.F("threshold")),
                        ("indeterminate_high__gte", models.F("threshold")),
                        ("indeterminate_high__lte", 1),
                    ),
                    _connector="OR",
                ),
                name="study_result_band_valid",
            ),
        ),
        migrations.AddConstraint(
            model_name="studyresult",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(("label", "indeterminate"), _negated=True),
                    ("indeterminate_low__isnull", False),
                    _connector="OR",
                ),
                name="study_result_indeterminate_needs_band",
            ),
        ),
    ]
