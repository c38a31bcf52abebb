"""agent install checks every route's subscription against the published tables, all problems at once."""

from agent.tables import PublishedTable, filtered_columns, subscription_problems
from pgfanout.core.config import TableSubscription

ORDERS = PublishedTable(1, "public", "orders", ("id", "status", "total"), ("id",), column_types=("bigint", "text", "numeric"))


def test_every_problem_is_named():
    found = subscription_problems(
        [ORDERS],
        {
            "east": {
                "public.orders": TableSubscription(where="status = 1", columns=["status", "nope"]),
                "public.missing": TableSubscription(),
            },
        },
    )
    assert "routes.east.tables.public.missing: not a table published by the source" in found
    assert "routes.east.tables.public.orders.columns: no such columns: nope" in found
    assert "routes.east.tables.public.orders.columns: must include the key (id)" in found
    assert any("routes.east.tables.public.orders.where" in p and "cannot compare text with number" in p for p in found)


def test_old_values_are_captured_for_every_filtered_column_of_every_route():
    used = filtered_columns(
        {
            "a": {"public.orders": TableSubscription(where="status = 'new'")},
            "b": {"public.orders": TableSubscription(where="total > 0 AND id > 5", columns=["id"])},
        }
    )
    assert used == {"public.orders": {"status", "total", "id"}}
