from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("studies", "0012_dicom_results")]

    operations = []
