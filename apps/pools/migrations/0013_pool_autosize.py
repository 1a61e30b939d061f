# Pools that size themselves (apps/pools/autosize.py): off by default, so every existing pool
# keeps its admin's size.

from django.db import migrations, models

import apps.pools.models


class Migration(migrations.Migration):

    dependencies = [
        ('pools', '0012_balance_hosts'),
    ]

    operations = [
        migrations.AddField(
            model_name='pool',
            name='autosize',
            field=models.BooleanField(default=False, help_text='Let the pool manager set the size from recent checkouts.', verbose_name='automatic size'),
        ),
        migrations.AddField(
            model_name='pool',
            name='min_size',
            field=models.PositiveIntegerField(default=0, help_text='Smallest size automatic sizing sets.', validators=[apps.pools.models.validate_pool_size]),
        ),
        migrations.AddField(
            model_name='pool',
            name='max_size',
            field=models.PositiveIntegerField(default=0, help_text='Largest size automatic sizing sets.', validators=[apps.pools.models.validate_pool_size]),
        ),
        migrations.AddConstraint(
            model_name='pool',
            constraint=models.CheckConstraint(condition=models.Q(('autosize', False), models.Q(('max_size__gte', 1), ('min_size__lte', models.F('max_size'))), _connector='OR'), name='pool_autosize_bounds'),
        ),
    ]
