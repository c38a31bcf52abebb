"""The row filter evaluator gives PostgreSQL's answer (TRUE, FALSE or NULL) for the same predicate and row.

Generated rows with NULLs and edge values go into a real table; each predicate runs in
PostgreSQL over every row and in the evaluator over the rows' text forms (read with the
capture triggers' pinned settings), and every answer must agree.
"""

import random

from psycopg import sql

from pgfanout.core.rowfilter import compile_filter, parse_filter
from pgfanout.runtime.pg import SESSION_SETTINGS

COLUMNS = {
    "id": "bigint",
    "region": 'text COLLATE "C"',
    "amount": "numeric",
    "score": "double precision",
    "ratio": "real",
    "active": "boolean",
    "born": "timestamp with time zone",
    "day": "date",
    "code": "character(4)",
    "tag": "uuid",
    "qty": "integer",
    "name": "character varying(20)",
}
VALUES = {
    "region": ["east", "west", "East", "", "é", "ÉAST", "north-east", "a%b", "a_b", "z"],
    "amount": ["0", "-1.5", "2.50", "1000000000000.000001", "NaN", "Infinity", "-Infinity", "10", "-0"],
    "score": ["0", "0.1", "-2.5", "NaN", "Infinity", "-Infinity", "1e300", "10"],
    "ratio": ["0.1", "0.3", "-1", "NaN", "Infinity", "3.4e38"],
    "active": ["true", "false"],
    "born": [
        "2024-01-01 00:00:00+00",
        "2023-12-31 23:59:59.999999+00",
        "infinity",
        "-infinity",
        "1999-06-15 12:00:00+02",
        "0044-03-15 00:00:00+00 BC",
        "294276-12-31 23:59:59+00",
    ],
    "day": ["2024-01-01", "1970-01-01", "infinity", "-infinity", "0001-01-01 BC", "2024-02-29"],
    "code": ["ab", "ab  ", "x", "", "abcd"],
    "tag": [
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "00000000-0000-0000-0000-000000000000",
        "ffffffff-ffff-ffff-ffff-ffffffffffff",
    ],
    "qty": ["0", "1", "-1", "2147483647", "-2147483648", "7"],
    "name": ["alice", "Bob", "ß", "", "straße", "O'Brien", "ÉAST", "éast", "Ångström"],
}
PREDICATES = [
    "region = 'east'",
    "region <> 'east'",
    "region < 'east'",
    "region >= 'E'",
    "region IN ('east', 'west')",
    "region NOT IN ('east', NULL)",
    "region LIKE 'e%'",
    "region LIKE '%!%%' ESCAPE '!'",
    "region NOT LIKE 'a_b'",
    "region ILIKE 'EAST'",
    "lower(name) = 'éast'",
    "upper(name) = 'ÉAST'",
    "name ILIKE 'é%'",
    "length(region) > 1",
    "region IS NULL",
    "region IS NOT NULL",
    "region IS DISTINCT FROM 'east'",
    "region IS NOT DISTINCT FROM NULL",
    "amount > 0",
    "amount = 'NaN'",
    "amount < 'Infinity'",
    "amount BETWEEN -2 AND 2.5",
    "amount NOT BETWEEN 0 AND 10",
    "abs(amount) >= 1.5",
    "coalesce(amount, -99) < 0",
    "amount IN (0, 10, NULL)",
    "amount = -0",
    "score > 0.1",
    "score = 'NaN'",
    "score <= 10",
    "score = 10",
    "score > amount",
    "ratio > 0.1",
    "ratio = 0.1",
    "ratio < score",
    "active",
    "NOT active",
    "active IS TRUE",
    "active IS NOT FALSE",
    "active = false",
    "born >= '2024-01-01'",
    "born < '2024-01-01 01:00:00+01'",
    "born > '-infinity'",
    "born BETWEEN '1999-01-01' AND '2024-01-01'",
    "day > '2000-01-01'",
    "day < born",
    "day = '2024-02-29'",
    "born > '0044-03-14 BC'",
    "code = 'ab'",
    "code = 'ab  '",
    "length(code) = 2",
    "code LIKE 'ab'",
    "code < 'b'",
    "tag = 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'",
    "tag > '10000000-0000-0000-0000-000000000000'",
    "qty > 0 AND region = 'east'",
    "qty > 0 OR region = 'east'",
    "NOT (qty > 0 OR region = 'east')",
    "qty IN (1, 7) OR amount > 5",
    "qty = 7.0",
    "qty < 1.5",
    "name = 'straße'",
    "upper(name) = 'STRASSE'",
    "lower(name) LIKE '%b%'",
    "name > 'B'",
    "name = 'O''Brien'",
    "coalesce(name, region, 'x') = 'x'",
    "id % 2 = 0 OR TRUE",
    "NULL AND FALSE",
    "NULL OR TRUE",
    "NOT NULL",
]
PREDICATES = [p for p in PREDICATES if "%" not in p.split("'")[0]]  # no arithmetic: `id % 2` is refused at parse


def generate_rows(count: int) -> list[dict[str, str | None]]:
    rng = random.Random(20261124)
    return [
        {"id": str(i), **{column: rng.choice(values) if rng.random() > 0.15 else None for column, values in VALUES.items()}}
        for i in range(1, count + 1)
    ]


def generated_predicates(count: int) -> list[str]:
    """Random AND/OR/NOT trees over the simple predicates, so NULLs meet every connective."""
    rng = random.Random(7)
    atoms = [p for p in PREDICATES if " AND " not in p and " OR " not in p]

    def tree(depth: int) -> str:
        if depth == 0 or rng.random() < 0.3:
            return rng.choice(atoms)
        roll = rng.random()
        if roll < 0.2:
            return f"NOT ({tree(depth - 1)})"
        return f"({tree(depth - 1)}) {'AND' if roll < 0.6 else 'OR'} ({tree(depth - 1)})"

    return [tree(3) for _ in range(count)]


def test_evaluator_matches_postgresql(stack):
    # region orders by code point (COLLATE "C"); name has the database's C.UTF-8 collation, whose
    # lower()/upper() map every Unicode letter (a "C" column would fold ASCII letters only)
    cluster = stack.postgres("primary")
    cluster.create_database("rowfilter_equivalence", drop_first=True)
    rows = generate_rows(300)
    predicates = PREDICATES + generated_predicates(150)
    names = list(COLUMNS)
    types = [t.split(" COLLATE")[0] for t in COLUMNS.values()]
    import psycopg

    with psycopg.connect(cluster.dsn("rowfilter_equivalence"), autocommit=True) as conn:
        for name, value in SESSION_SETTINGS.items():
            conn.execute("SELECT set_config(%s, %s, false)", (name, value))
        conn.execute(
            sql.SQL("CREATE TABLE t ({})").format(
                sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in COLUMNS.items())
            )
        )
        with conn.cursor().copy(sql.SQL("COPY t ({}) FROM STDIN").format(sql.SQL(", ").join(map(sql.Identifier, names)))) as copy:
            for row in rows:
                copy.write_row([row[c] for c in names])
        # what the evaluator sees: each value as the capture trigger writes it (col::text)
        texts = {
            r[0]: list(r[1:])
            for r in conn.execute(
                sql.SQL("SELECT id, {} FROM t").format(
                    sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in names)
                )
            )
        }
        mismatches, checked = [], 0
        for predicate in predicates:
            evaluate = compile_filter(parse_filter(predicate), names, types)
            expected = dict(conn.execute(sql.SQL("SELECT id, ({}) FROM t").format(sql.SQL(predicate))).fetchall())
            for row_id, text_row in texts.items():
                got = evaluate(text_row)
                checked += 1
                if got is not expected[row_id]:
                    row = dict(zip(names, text_row, strict=True))
                    mismatches.append(f"{predicate!r} on {row}: PostgreSQL {expected[row_id]}, evaluator {got}")
    assert not mismatches, f"{len(mismatches)} of {checked} answers differ:\n" + "\n".join(mismatches[:20])
    assert checked >= 60_000
    assert len({p for p in predicates}) > 150
