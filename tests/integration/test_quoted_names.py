"""A table whose names need quoting, named in PostgreSQL's syntax everywhere the config names tables and columns."""

import random

from tests.integration.pipeline import BOTH_TRIGGERS

TABLE = '"Sales"."Order Lines"'
DDL = [
    'CREATE SCHEMA "Sales"',
    # no primary key: the configured key names the quoted columns of a unique NOT NULL index
    """CREATE TABLE "Sales"."Order Lines" ("Order No" integer NOT NULL, "Line" integer NOT NULL,
                                           "Qty Ordered" integer NOT NULL, "Note" text,
                                           UNIQUE ("Order No", "Line"))""",
]
COLUMNS = ['"Order No"', '"Line"', '"Qty Ordered"']


@BOTH_TRIGGERS
def test_quoted_table_and_column_names_replicate(pipeline):
    first, second = pipeline.subscribers
    data = pipeline.data
    route, whole = pipeline.route, f"{pipeline.name}.whole"
    data["sources"][pipeline.source].update(tables=[TABLE], keys={TABLE: ['"Order No"', '"Line"']})
    data["routes"] = {
        route: {
            "upstream": pipeline.source,
            "kafka": "local",
            "tables": {TABLE: {"where": '"Qty Ordered" > 5', "columns": COLUMNS}},
        },
        whole: {"upstream": pipeline.source, "kafka": "local"},
    }
    data["distributors"] = {pipeline.distributor: {"routes": [route, whole]}}
    data["subscribers"][second]["route"] = whole
    pipeline.reconfigure(data)
    pipeline.prepare(install=False, bare=(first, second))
    with pipeline.primary() as conn:
        for statement in DDL:
            conn.execute(statement)
        conn.execute("""INSERT INTO "Sales"."Order Lines" SELECT o, l, (o * l) % 11, 'early'
                        FROM generate_series(1, 40) o, generate_series(1, 3) l""")
    installed = pipeline.command("agent", "install")
    assert installed.returncode == 0, installed.stderr
    assert TABLE in installed.stdout, "the install names the table as psql shows it"
    for subscriber in pipeline.subscribers:
        init = pipeline.command("subscriber", "init", subscriber)
        assert init.returncode == 0, init.stderr
    pipeline.start()

    rng = random.Random(7)
    with pipeline.primary() as conn:
        for n in range(300):
            order, line = rng.randint(1, 60), rng.randint(1, 4)
            action = rng.random()
            with conn.transaction():
                if action < 0.4:
                    conn.execute(
                        """INSERT INTO "Sales"."Order Lines" VALUES (%s, %s, %s, 'new')
                                    ON CONFLICT ("Order No", "Line") DO UPDATE SET "Qty Ordered" = excluded."Qty Ordered\"""",
                        (order, line, rng.randint(0, 10)),
                    )
                elif action < 0.8:  # moves rows in and out of the filter
                    conn.execute(
                        """UPDATE "Sales"."Order Lines" SET "Qty Ordered" = %s, "Note" = 'changed'
                                    WHERE "Order No" = %s""",
                        (rng.randint(0, 10), order),
                    )
                elif action < 0.9:  # a key change
                    conn.execute(
                        """UPDATE "Sales"."Order Lines" SET "Line" = %s
                                    WHERE "Order No" = %s AND "Line" = %s""",
                        (1000 + n, order, line),
                    )
                else:
                    conn.execute("""DELETE FROM "Sales"."Order Lines" WHERE "Order No" = %s AND "Line" = %s""", (order, line))
    pipeline.wait_caught_up()

    query = 'SELECT {} FROM "Sales"."Order Lines" {} ORDER BY "Order No", "Line"'
    with pipeline.primary() as conn:
        expected_filtered = conn.execute(query.format(", ".join(COLUMNS), 'WHERE "Qty Ordered" > 5')).fetchall()
        expected_whole = conn.execute(query.format("*", "")).fetchall()
    with pipeline.replica(first) as conn:
        assert [
            r[0]
            for r in conn.execute(
                """SELECT attname FROM pg_attribute WHERE attrelid = '"Sales"."Order Lines"'::regclass AND attnum > 0
               AND NOT attisdropped ORDER BY attnum"""
            )
        ] == ["Order No", "Line", "Qty Ordered"]
        assert conn.execute(query.format(", ".join(COLUMNS), "")).fetchall() == expected_filtered
    with pipeline.replica(second) as conn:
        assert conn.execute(query.format("*", "")).fetchall() == expected_whole
    assert 0 < len(expected_filtered) < len(expected_whole)

    status = pipeline.command("status")
    assert status.returncode == 0, status.stderr
    resync = pipeline.command("subscriber", "resync", first, "--table", 'SALES."Order Lines"')
    assert resync.returncode != 0 and "not published to subscriber" in resync.stderr, (
        "an unquoted schema folds to lower case: another table"
    )
    resync = pipeline.command("subscriber", "resync", first, "--table", TABLE)
    assert resync.returncode == 0, resync.stderr
    assert f"table {TABLE} of subscriber {first} copied again" in resync.stdout
