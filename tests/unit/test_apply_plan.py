import pytest

from pgfanout.core.errors import PoisonMessage
from subscriber.apply import RunShape, plan, statement, table_info

T = {1: table_info("public", "t", ("id", "v"), ("id",))}


def change(op, values=(), old_key=(), table=1, nulls=()):
    return {"table": table, "op": op, "values": list(values), "nulls": list(nulls), "old_key": list(old_key)}


def test_nulls_are_restored_from_their_indexes():
    runs = list(plan([change("INSERT", ["1", ""], nulls=[1]), change("INSERT", ["2", ""])], T, "w"))
    assert runs[0].params == [("1", None), ("2", "")]


def test_consecutive_alike_changes_share_a_run_in_order():
    changes = [
        change("INSERT", ["1", "a"]),
        change("INSERT", ["2", "b"]),
        change("UPDATE", ["1", "c"]),
        change("INSERT", ["3", "d"]),
    ]
    runs = list(plan(changes, T, "w"))
    assert [r.shape.op for r in runs] == ["INSERT", "UPDATE", "INSERT"]
    assert runs[0].params == [("1", "a"), ("2", "b")]
    assert runs[1].params == [("1", "c", "1")]


def test_key_change_updates_by_the_old_key():
    runs = list(plan([change("UPDATE", ["9", "x"], old_key=["1"])], T, "w"))
    assert runs[0].params == [("9", "x", "1")]
    assert statement(runs[0].shape).as_string() == 'UPDATE "public"."t" SET "id" = %s, "v" = %s WHERE "id" = %s'


def test_deletes_use_the_old_key():
    runs = list(plan([change("DELETE", old_key=["4"])], T, "w"))
    assert runs[0].params == [("4",)]


def test_statements_quote_identifiers():
    odd = table_info("Odd Schema", 'we"ird', ("k 1", "k2", "v"), ("k 1", "k2"))
    assert statement(RunShape(odd, "DELETE")).as_string() == 'DELETE FROM "Odd Schema"."we""ird" WHERE "k 1" = %s AND "k2" = %s'
    plain = table_info("s", "t", ("a", "b"), ("a",))
    assert statement(RunShape(plain, "INSERT")).as_string() == 'INSERT INTO "s"."t" ("a", "b") VALUES (%s, %s)'


def test_truncates_are_never_merged():
    assert len(list(plan([change("TRUNCATE"), change("TRUNCATE")], T, "w"))) == 2


@pytest.mark.parametrize(
    "bad, words",
    [
        (change("INSERT", ["1"]), "1 values for 2 columns"),
        (change("UPDATE"), "no values"),
        (change("DELETE"), "lacks its key"),
        (change("INSERT", ["1", "a"], table=7), "refers to table 7"),
    ],
)
def test_malformed_changes_are_poison(bad, words):
    with pytest.raises(PoisonMessage, match=words):
        list(plan([bad], T, "topic[0]@5"))


def test_key_columns_must_be_columns():
    with pytest.raises(PoisonMessage, match="key columns"):
        table_info("s", "t", ("a",), ("b",))
