"""Form fields that read numbers strictly: ASCII digits only.

Django's IntegerField and DurationField go through int() and \\d, which also take other
scripts' digits ("٣" is 3), so a value a person never meant could be stored."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from django import forms

_WHOLE = re.compile(r"[-+]?[0-9]+")


def _ascii_or_invalid(field: forms.Field, value: object) -> None:
    if isinstance(value, str) and not value.isascii():
        raise forms.ValidationError(field.error_messages["invalid"], code="invalid")


class AsciiIntegerField(forms.IntegerField):
    def to_python(self, value: Any) -> int | None:
        # int() also reads "1_0" as 10.
        if isinstance(value, str) and value.strip() and not _WHOLE.fullmatch(value.strip()):
            raise forms.ValidationError(self.error_messages["invalid"], code="invalid")
        return super().to_python(value)


class AsciiDurationField(forms.DurationField):
    def to_python(self, value: Any) -> timedelta | None:
        _ascii_or_invalid(self, value)
        return super().to_python(value)
