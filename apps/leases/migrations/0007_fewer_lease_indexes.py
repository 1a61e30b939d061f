"""Fewer indexes for each lease row version to write (a checkout inserts one, a return updates it).

- (user) alone: (user, ended_at) starts with it.
- expires_at: read only for active leases (expiry, the expiry warning), so only they get an
  entry; the index no longer grows by one for every VM ever leased. Built before the old
  one is dropped.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("leases", "0006_active_lease_pages"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddIndex(
            model_name="lease",
            index=models.Index(condition=models.Q(("ended_at__isnull", True)), fields=["expires_at"],
                               name="lease_active_expiry"),
        ),
        migrations.AlterField(
            model_name="lease",
            name="expires_at",
            field=models.DateTimeField(),
        ),
        migrations.AlterField(
            model_name="lease",
            name="user",
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT,
                                    related_name="leases", to=settings.AUTH_USER_MODEL),
        ),
    ]
