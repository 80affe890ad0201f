# Worker liveness (issue 11): a heartbeat row per running worker, and which worker holds a claim.
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("studies", "0009_out_of_distribution")]

    operations = [
        migrations.AddField(
            model_name="radiograph",
            name="claimed_worker",
            field=models.CharField(blank=True, max_length=64),
        ),
        migrations.CreateModel(
            name="InferenceWorker",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("worker_id", models.CharField(max_length=64, unique=True)),
                ("nodename", models.CharField(max_length=255)),
                ("host", models.CharField(max_length=255)),
                ("pid", models.PositiveIntegerField()),
                ("started_at", models.DateTimeField()),
                ("beat_at", models.DateTimeField(db_index=True)),
                ("stopped_at", models.DateTimeField(blank=True, null=True)),
            ],
            options={"ordering": ["-beat_at"]},
        ),
    ]
