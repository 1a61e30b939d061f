import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='StateChange',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('at', models.DateTimeField(default=django.utils.timezone.now)),
                ('model', models.CharField(help_text='app_label.model, e.g. pools.template', max_length=64)),
                ('object_id', models.BigIntegerField()),
                ('field', models.CharField(max_length=32)),
                ('old', models.CharField(max_length=16, verbose_name='from')),
                ('new', models.CharField(max_length=16, verbose_name='to')),
                ('reason', models.TextField(blank=True)),
                ('actor_name', models.CharField(help_text='Username, or "system" for jobs.', max_length=150)),
                ('job_id', models.BigIntegerField(blank=True, help_text='The job that made the change, if one did.',
                                                  null=True)),
                ('request_id', models.CharField(blank=True, max_length=64)),
                ('actor', models.ForeignKey(blank=True, db_constraint=False, null=True,
                                            on_delete=django.db.models.deletion.DO_NOTHING, related_name='+',
                                            to=settings.AUTH_USER_MODEL)),
            ],
            options={
                'ordering': ['at', 'id'],
                'indexes': [models.Index(fields=['model', 'object_id'], name='statechange_object')],
            },
        ),
    ]
