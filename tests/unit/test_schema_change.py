"""Schema changes: a stored definition on the wire, a route's share of it, renames a route uses, and the
statements that make a replica's table like it."""

from pgfanout.core.schemachange import mentions, previous_name, project_definition, renames_of, wire_definition
from subscriber.ddl import Column, TableDefinition
from subscriber.schema import create_steps, plan_alter, plan_renames

STORED = {
    "primary_key": ["id"],
    "columns": [
        {"attnum": 1, "name": "id", "type": "integer", "not_null": True, "collation": "", "generated": ""},
        {"attnum": 2, "name": "region", "type": "text", "not_null": False, "collation": "", "generated": ""},
        {"attnum": 4, "name": "amount", "type": "bigint", "not_null": True, "collation": "", "generated": ""},
        {"attnum": 5, "name": "secret", "type": "text", "not_null": False, "collation": '"C"', "generated": ""},
        {"attnum": 6, "name": "twice", "type": "bigint", "not_null": False, "collation": "", "generated": "(amount * 2)"},
    ],
    "constraints": [
        {"name": "orders_pkey", "definition": "PRIMARY KEY (id)"},
        {"name": "secret_short", "definition": "CHECK ((length(secret) < 10))"},
    ],
    "indexes": [
        {"name": "orders_amount", "definition": "CREATE INDEX orders_amount ON public.orders USING btree (amount)"},
        {"name": "orders_secret", "definition": "CREATE INDEX orders_secret ON public.orders USING btree (secret)"},
    ],
    "renamed_columns": {"amount": "total"},
    "dropped_columns": ["gone"],
    "dropped_constraints": ["old_check"],
    "dropped_indexes": ["orders_region"],
}


def test_a_stored_definition_goes_on_the_wire_with_every_field_and_nothing_else():
    wire = wire_definition(STORED)
    assert wire is not None and set(wire) == {
        "columns",
        "constraints",
        "indexes",
        "renamed_columns",
        "dropped_columns",
        "dropped_constraints",
        "dropped_indexes",
        "previous_schema",
        "previous_table",
        "created",
        "dropped_table",
    }
    assert wire["columns"][3] == {"name": "secret", "type": "text", "not_null": False, "collation": '"C"', "generated": ""}
    assert wire["renamed_columns"] == {"amount": "total"} and wire["previous_table"] == ""
    assert previous_name(wire) is None
    assert wire_definition(None) is None
    moved = wire_definition({**STORED, "previous_schema": "public", "previous_table": "orders_old"})
    assert previous_name(moved) == ("public", "orders_old")


def test_a_route_with_a_column_list_gets_its_columns_and_what_is_built_on_them_only():
    wire = wire_definition(STORED)
    share = project_definition(wire, {"id", "region", "amount"})
    assert [c["name"] for c in share["columns"]] == ["id", "region", "amount", "twice"]  # twice: from amount
    assert [c["name"] for c in share["constraints"]] == ["orders_pkey"]
    assert [i["name"] for i in share["indexes"]] == ["orders_amount"]
    assert share["renamed_columns"] == {"amount": "total"}
    assert project_definition(wire, {"id", "region"})["renamed_columns"] == {}
    assert project_definition(wire, {c["name"] for c in wire["columns"]}) is wire


def test_renames_of_the_columns_a_route_names_are_found():
    wire = wire_definition(STORED)
    assert renames_of(wire, {"total", "region"}) == {"total": "amount"}
    assert renames_of(wire, {"region"}) == {}
    assert renames_of(None, {"total"}) == {}
    assert mentions('CHECK (("Total Sum" > 0))', {"Total Sum"}) and not mentions("CHECK ((total > 0))", {"tot"})


def replica(columns, constraints=(), indexes=()):
    return TableDefinition("public", "orders", tuple(columns), tuple(constraints), tuple(indexes), (), False, 0, 0)


def statements(steps):
    return [s.statement.as_string(None) for s in steps]


def test_a_replica_table_is_altered_to_the_definition_drops_and_renames_first_keeping_its_own():
    current = replica(
        [
            Column("id", "integer", True, None, None),
            Column("region", "character varying(10)", True, None, None),
            Column("total", "integer", True, None, None),
            Column("gone", "text", False, None, None),
            Column("local_note", "text", False, None, None),  # the replica's own
        ],
        [("orders_pkey", "PRIMARY KEY (id)"), ("old_check", "CHECK ((total > 0))")],
        [
            ("orders_region", "CREATE INDEX orders_region ON public.orders USING btree (region)"),
            ("report_idx", "CREATE INDEX report_idx ON public.orders USING btree (local_note)"),  # its own
        ],
    )
    wire = wire_definition(STORED)
    assert statements(plan_renames(current, wire)) == [
        'ALTER TABLE "public"."orders" DROP COLUMN "gone"',
        'ALTER TABLE "public"."orders" RENAME COLUMN "total" TO "amount"',
    ]
    renamed = replica(
        [*current.columns[:2], Column("amount", "integer", True, None, None), current.columns[4]],
        current.constraints,
        current.indexes,
    )
    assert plan_renames(renamed, wire) == []
    assert statements(plan_alter(renamed, wire, {"secret": "none"})) == [
        'ALTER TABLE "public"."orders" DROP CONSTRAINT "old_check"',
        'DROP INDEX "public"."orders_region"',
        'ALTER TABLE "public"."orders" ALTER COLUMN "region" TYPE text USING "region"::text',
        'ALTER TABLE "public"."orders" ALTER COLUMN "region" DROP NOT NULL',
        'ALTER TABLE "public"."orders" ALTER COLUMN "amount" TYPE bigint USING "amount"::bigint',
        'ALTER TABLE "public"."orders" ADD COLUMN "secret" text COLLATE "C" DEFAULT \'none\'::text',
        'ALTER TABLE "public"."orders" ALTER COLUMN "secret" DROP DEFAULT',
        'ALTER TABLE "public"."orders" ADD COLUMN "twice" bigint GENERATED ALWAYS AS ((amount * 2)) STORED',
        'ALTER TABLE "public"."orders" ADD CONSTRAINT "secret_short" CHECK ((length(secret) < 10))',
        "CREATE INDEX orders_amount ON public.orders USING btree (amount)",
        "CREATE INDEX orders_secret ON public.orders USING btree (secret)",
    ]


def test_a_column_renamed_to_the_name_of_one_dropped_in_the_same_change_takes_its_place():
    current = replica(
        [
            Column("id", "integer", True, None, None),
            Column("a", "text", False, None, None),
            Column("b", "text", False, None, None),
        ]
    )
    wire = wire_definition(
        {
            "columns": [
                {"name": "id", "type": "integer", "not_null": True},
                {"name": "b", "type": "text", "not_null": False},
            ],
            "renamed_columns": {"b": "a"},
            "dropped_columns": ["b"],
        }
    )
    assert statements(plan_renames(current, wire)) == [
        'ALTER TABLE "public"."orders" DROP COLUMN "b"',
        'ALTER TABLE "public"."orders" RENAME COLUMN "a" TO "b"',
    ]


def test_a_replica_table_like_the_definition_needs_nothing():
    wire = wire_definition(STORED)
    same = replica(
        [Column(c["name"], c["type"], c["not_null"], c["collation"] or None, c["generated"] or None) for c in wire["columns"]],
        [(c["name"], c["definition"]) for c in wire["constraints"]],
        [(i["name"], i["definition"]) for i in wire["indexes"]],
    )
    assert plan_alter(same, wire, {}) == [] and plan_renames(same, wire) == []
    changed_key = dict(
        wire, constraints=[{"name": "orders_pkey", "definition": "PRIMARY KEY (id, region)"}, wire["constraints"][1]]
    )
    assert statements(plan_alter(same, changed_key, {})) == [
        'ALTER TABLE "public"."orders" DROP CONSTRAINT "orders_pkey"',
        'ALTER TABLE "public"."orders" ADD CONSTRAINT "orders_pkey" PRIMARY KEY (id, region)',
    ]


def test_a_table_the_source_created_is_built_whole():
    created = wire_definition({**STORED, "created": True, "renamed_columns": {}})
    assert created["created"] and not created["dropped_table"]
    assert statements(create_steps("public", "orders", created)) == [
        'CREATE TABLE "public"."orders" ("id" integer NOT NULL, "region" text, "amount" bigint NOT NULL, '
        '"secret" text COLLATE "C", "twice" bigint GENERATED ALWAYS AS ((amount * 2)) STORED)',
        'ALTER TABLE "public"."orders" ADD CONSTRAINT "orders_pkey" PRIMARY KEY (id)',
        'ALTER TABLE "public"."orders" ADD CONSTRAINT "secret_short" CHECK ((length(secret) < 10))',
        "CREATE INDEX orders_amount ON public.orders USING btree (amount)",
        "CREATE INDEX orders_secret ON public.orders USING btree (secret)",
    ]


def test_patterns_of_the_source_tables_publish_tables_created_later():
    from agent.capture import published_patterns
    from agent.tables import patterns
    from pgfanout.core.config import Source

    source = Source(dsn="dbname=x", kafka="k", tables=["public.orders", "app.*", "App.Report_*"], exclude=["app.scratch"])
    assert patterns(source.tables) == [("app", ""), ("app", "report_")]
    assert [s.as_string(None) for s in published_patterns(source)] == [
        "DELETE FROM pgfanout.publish_pattern",
        "DELETE FROM pgfanout.publish_exclude",
        "INSERT INTO pgfanout.publish_pattern (schema_name, prefix) VALUES ('app', '')",
        "INSERT INTO pgfanout.publish_pattern (schema_name, prefix) VALUES ('app', 'report_')",
        "INSERT INTO pgfanout.publish_exclude (schema_name, table_name) VALUES ('app', 'scratch')",
    ]
