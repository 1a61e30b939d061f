"""Fewer indexes for each VM row version to write (state is indexed, so no update is HOT).

(pool) and (pool, state) repeated the first columns of vm_checkout_order; moving_to is
NULL for almost every VM, so only the VMs being moved get an entry.
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('inventory', '0002_host_cpu_threads'),
        ('pools', '0014_pool_schedule'),
    ]

    operations = [
        migrations.AddIndex(
            model_name='vm',
            index=models.Index(condition=models.Q(('moving_to__isnull', False)), fields=['moving_to'], name='vm_moving_to'),
        ),
        migrations.RemoveIndex(
            model_name='vm',
            name='pools_vm_pool_id_37357f_idx',
        ),
        migrations.AlterField(
            model_name='vm',
            name='moving_to',
            field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='inventory.host'),
        ),
        migrations.AlterField(
            model_name='vm',
            name='pool',
            field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='vms', to='pools.pool'),
        ),
    ]
