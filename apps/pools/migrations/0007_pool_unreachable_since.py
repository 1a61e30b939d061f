from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('pools', '0006_installation'),
    ]

    operations = [
        migrations.AddField(
            model_name='pool',
            name='unreachable_since',
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
