"""Audit rows as CSV cells that a spreadsheet shows as text, never runs."""

from __future__ import annotations

# A cell starting with one of these is a formula to Excel, LibreOffice and Google Sheets
# (tab and CR too, as some strip them first): OWASP's "CSV injection".
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> str:
    """``value`` as text; a leading apostrophe makes a would-be formula plain text."""
    text = "" if value is None else str(value)
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text


def csv_row(values: list) -> list[str]:
    return [csv_cell(v) for v in values]
