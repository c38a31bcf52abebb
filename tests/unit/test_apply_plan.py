from subscriber.apply import RunShape, plan, statement


def change(op, key, row=None, old_key=None, table="t"):
    return {"schema_name": "public", "table_name": table, "op": op, "key": key, "old_key": old_key, "row": row}


def test_consecutive_alike_changes_share_a_run_in_order():
    changes = [
        change("INSERT", {"id": "1"}, {"id": "1", "v": "a"}),
        change("INSERT", {"id": "2"}, {"id": "2", "v": "b"}),
        change("UPDATE", {"id": "1"}, {"id": "1", "v": "c"}),
        change("INSERT", {"id": "3"}, {"id": "3", "v": "d"}),
    ]
    runs = list(plan(changes))
    assert [r.shape.op for r in runs] == ["INSERT", "UPDATE", "INSERT"]
    assert runs[0].params == [("1", "a"), ("2", "b")]
    assert runs[1].params == [("1", "c", "1")]


def test_key_change_updates_by_the_old_key():
    runs = list(plan([change("UPDATE", {"id": "9"}, {"id": "9", "v": "x"}, old_key={"id": "1"})]))
    assert runs[0].params == [("9", "x", "1")]
    assert statement(runs[0].shape).as_string() == 'UPDATE "public"."t" SET "id" = %s, "v" = %s WHERE "id" = %s'


def test_statements_quote_identifiers():
    shape = RunShape("Odd Schema", 'we"ird', "DELETE", (), ("k 1", "k2"))
    assert statement(shape).as_string() == 'DELETE FROM "Odd Schema"."we""ird" WHERE "k 1" = %s AND "k2" = %s'
    insert = RunShape("s", "t", "INSERT", ("a", "b"), ())
    assert statement(insert).as_string() == 'INSERT INTO "s"."t" ("a", "b") VALUES (%s, %s)'


def test_truncates_are_never_merged():
    runs = list(plan([change("TRUNCATE", {}), change("TRUNCATE", {})]))
    assert len(runs) == 2
