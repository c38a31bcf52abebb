import pytest

from pgfanout.core.errors import NameSyntaxError
from pgfanout.core.names import ALL_TABLES, TablePattern, canonical_table, parse_column, parse_table, quote


@pytest.mark.parametrize(
    ("written", "schema", "table", "canonical"),
    [
        ("public.orders", "public", "orders", "public.orders"),
        ("Public.Orders", "public", "orders", "public.orders"),  # unquoted names fold to lower case
        ('"Sales"."Order Lines"', "Sales", "Order Lines", '"Sales"."Order Lines"'),
        ('"public"."orders"', "public", "orders", "public.orders"),  # quotes only where psql needs them
        ('"a""b"."c.d"', 'a"b', "c.d", '"a""b"."c.d"'),  # doubled quotes and dots inside quotes
        (" s.t2$ ", "s", "t2$", "s.t2$"),
        ('"1st".x', "1st", "x", '"1st".x'),
    ],
)
def test_tables_are_read_as_postgresql_reads_them(written, schema, table, canonical):
    assert parse_table(written) == (schema, table)
    assert canonical_table(written) == canonical
    assert parse_table(canonical) == (schema, table), "the canonical spelling reads back as the same table"


def test_a_schemas_tables():
    assert parse_table("Sales.*", wildcard=True) == ("sales", ALL_TABLES)
    assert canonical_table('"Sales".*', wildcard=True) == '"Sales".*'
    assert parse_table('s."*"') == ("s", "*"), "a quoted * is a table named *"
    assert canonical_table('s."*"') == 's."*"'
    with pytest.raises(NameSyntaxError, match="one table"):
        parse_table("s.*")


def test_a_schemas_tables_by_the_start_of_their_names():
    schema, pattern = parse_table("App.Order_*", wildcard=True)
    assert (schema, pattern) == ("app", "order_") and isinstance(pattern, TablePattern)
    assert pattern.matches("order_lines") and not pattern.matches("orders")
    assert canonical_table("App.Order_*", wildcard=True) == "app.order_*"
    assert parse_table('s."order_*"') == ("s", "order_*"), "quoted, it is a table's name"
    with pytest.raises(NameSyntaxError, match="one table"):
        parse_table("s.order_*")
    with pytest.raises(NameSyntaxError, match="unexpected '\\*'"):
        parse_table("s*.orders", wildcard=True)


@pytest.mark.parametrize(
    ("written", "reason"),
    [
        ("Sales.Order Lines", "double quotes"),
        ("orders", "schema.table"),
        ("a.b.c", "schema.table"),
        ('"unclosed.x', "expected a name"),
        ("s.", "expected a name at the end"),
        ("", "expected a name"),
        ('"".x', "expected a name"),
    ],
)
def test_bad_table_names_say_what_is_wrong(written, reason):
    with pytest.raises(NameSyntaxError, match=reason) as err:
        parse_table(written)
    assert err.value.exit_code == 2 and repr(written) in str(err.value)


def test_columns():
    assert parse_column('"Qty Ordered"') == "Qty Ordered"
    assert parse_column("Status") == "status"
    for bad in ("t.c", "Qty Ordered", "*"):
        with pytest.raises(NameSyntaxError):
            parse_column(bad)


def test_quote_is_psqls():
    assert quote("orders") == "orders"
    assert quote("Orders") == '"Orders"'
    assert quote('say "hi"') == '"say ""hi"""'
    assert quote("_x1$") == "_x1$"
