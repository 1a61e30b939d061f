"""The audit log's search form."""

from __future__ import annotations

from datetime import datetime, time, timedelta

from django import forms
from django.core.exceptions import ValidationError
from django.utils import timezone

from apps.pools.models import Pool


class AuditFilterForm(forms.Form):
    actor = forms.CharField(required=False, max_length=150)
    action = forms.CharField(required=False, max_length=64, help_text='A prefix such as "pool." works too.')
    pool = forms.ModelChoiceField(queryset=Pool.objects.order_by("name"), required=False)
    since = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(required=False, label="To (inclusive)", widget=forms.DateInput(attrs={"type": "date"}))
    q = forms.CharField(required=False, max_length=200, label="Search")

    def clean(self):
        data = super().clean()
        if data.get("since") and data.get("until") and data["since"] > data["until"]:
            raise ValidationError("The start date is after the end date.")
        return data

    def filters(self) -> dict:
        d = self.cleaned_data
        tz = timezone.get_current_timezone()
        since = timezone.make_aware(datetime.combine(d["since"], time.min), tz) if d.get("since") else None
        until = (
            timezone.make_aware(datetime.combine(d["until"], time.min), tz) + timedelta(days=1)
            if d.get("until") else None
        )
        pool = d.get("pool")
        return {"actor": d.get("actor", "").strip(), "action": d.get("action", "").strip(),
                "pool_id": pool.pk if pool else None, "since": since, "until": until, "q": d.get("q", "").strip()}
