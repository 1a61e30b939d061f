# Weekly windows in which an automatic pool keeps a larger smallest size (apps/pools/autosize.py).

import django.core.validators
import django.db.models.deletion
from django.db import migrations, models

import apps.pools.models


class Migration(migrations.Migration):

    dependencies = [
        ('pools', '0013_pool_autosize'),
    ]

    operations = [
        migrations.CreateModel(
            name='PoolSchedule',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('weekdays', models.CharField(max_length=7, validators=[django.core.validators.RegexValidator('^[0-6]{1,7}\\Z', 'Pick at least one day.')])),
                ('start', models.TimeField(help_text="HH:MM, in the portal's time zone.")),
                ('end', models.TimeField(help_text='HH:MM, after the start; the window ends before it.')),
                ('min_size', models.PositiveIntegerField(help_text='Smallest size during the window.', validators=[apps.pools.models.validate_pool_size])),
                ('pool', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='schedules', to='pools.pool')),
            ],
            options={
                'ordering': ['start', 'weekdays', 'pk'],
                'constraints': [models.CheckConstraint(condition=models.Q(('start__lt', models.F('end'))), name='poolschedule_start_before_end')],
            },
        ),
    ]
