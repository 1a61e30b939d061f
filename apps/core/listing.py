"""Server-side sorting and search for a table page: ``?sort=<column>`` (``-<column>`` for
descending) and ``?q=<text>``, read once, applied to the queryset, and handed to the template
as header links that keep the other parameter (a polled page polls its own full URL, so both
survive the refresh)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from operator import or_
from typing import Any
from urllib.parse import urlencode

from django.db.models import Q, QuerySet
from django.http import HttpRequest

MAX_QUERY = 100  # longer search text is cut; nobody types more into a table filter


@dataclass(frozen=True)
class Column:
    href: str  # the link that sorts by this column (the other way round if it is the current one)
    aria_sort: str  # "ascending", "descending" or "none", for the <th>
    arrow: str


@dataclass(frozen=True)
class Listing:
    sort: str
    q: str
    columns: dict[str, Column]


def sort_and_search(request: HttpRequest, queryset: QuerySet[Any], *, columns: dict[str, tuple[str, ...]],
                    default: str, search: tuple[str, ...]) -> tuple[QuerySet[Any], Listing]:
    """``columns`` maps a column's key to the fields it orders by; ``default`` is a key, with
    "-" for descending; ``search`` names the fields ``q`` is looked for in (any, case-insensitive)."""
    sort = request.GET.get("sort", "")
    if sort.removeprefix("-") not in columns:  # an unknown column is ignored, not an error
        sort = default
    desc = sort.startswith("-")
    key = sort.removeprefix("-")
    q = request.GET.get("q", "").strip()[:MAX_QUERY]
    if q:
        queryset = queryset.filter(reduce(or_, (Q(**{f"{field}__icontains": q}) for field in search)))
    queryset = queryset.order_by(*(f"-{f}" if desc else f for f in columns[key]), "pk")
    links = {}
    for name in columns:
        current = name == key
        wanted = f"-{name}" if current and not desc else name
        params = {"sort": wanted, **({"q": q} if q else {})}
        links[name] = Column(href=f"?{urlencode(params)}",
                             aria_sort=("descending" if desc else "ascending") if current else "none",
                             arrow=("▼" if desc else "▲") if current else "")
    return queryset, Listing(sort=sort, q=q, columns=links)
