from __future__ import annotations

from django import template

from apps.pools import history
from apps.pools.models import Pool

register = template.Library()


@register.inclusion_tag("pools/partials/_history.html", takes_context=True)
def pool_history(context: template.Context, pool: Pool) -> dict:
    """The pool's history chart; ?history=7d on the page picks the week."""
    request = context.get("request")
    range_name = request.GET.get("history", "24h") if request is not None else "24h"
    return {"chart": history.pool_history(pool, range_name), "pool": pool}
