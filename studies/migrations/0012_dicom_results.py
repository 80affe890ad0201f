from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("studies", "0011_dicom_receive")]

    operations = []
